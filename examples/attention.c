/* rpa from C: one decode step of two sequences over a paged KV cache (combined layout, float32).
 * Build: cc attention.c $(pkg-config --cflags --libs rpa) -o attention */
#include <stdio.h>

#include <rpa/rpa.h>

enum { QH = 2, KVH = 1, D = 4, PAGE = 16, PAGES = 3, S = 2, W = 2, T = 2 };

int main(void) {
  /* Sequence 0 holds 3 tokens in page 2; sequence 1 holds 20 tokens in pages 0 and 1. */
  static float kv[PAGES][PAGE][2 * KVH][D]; /* K of kv head h at 2h, V at 2h+1 */
  float queries[T][QH][D], out[T][QH][D];
  int32_t context_lens[S] = {3, 20};
  int32_t block_tables[S][W] = {{2, 0}, {0, 1}};
  int32_t query_start_loc[S + 1] = {0, 1, 2}; /* one new token each: its position is context_len - 1 */
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < QH; ++h)
      for (int d = 0; d < D; ++d) queries[t][h][d] = 1.0f;
  for (int j = 0; j < 3; ++j)
    for (int d = 0; d < D; ++d) kv[2][j][1][d] = (float)(j + 1); /* V = 1, 2, 3; K = 0 */

  rpa_context* ctx;
  if (rpa_context_create(NULL, &ctx) != RPA_STATUS_OK) { /* NULL: backend AUTO, all cores */
    fprintf(stderr, "%s\n", rpa_last_error());
    return 1;
  }
  rpa_attention_args args;
  rpa_attention_args_init(&args);
  /* A tensor: data, dtype, ndim, shape, strides in elements (all zero: contiguous). */
  args.queries = (rpa_tensor){queries, RPA_DTYPE_F32, 3, {T, QH, D}, {0}};
  args.kv_pages = (rpa_tensor){kv, RPA_DTYPE_F32, 4, {PAGES, PAGE, 2 * KVH, D}, {0}};
  args.context_lens = (rpa_tensor){context_lens, RPA_DTYPE_I32, 1, {S}, {0}};
  args.block_tables = (rpa_tensor){block_tables, RPA_DTYPE_I32, 2, {S, W}, {0}};
  args.query_start_loc = (rpa_tensor){query_start_loc, RPA_DTYPE_I32, 1, {S + 1}, {0}};
  args.num_seqs = S;
  args.sliding_window = 0; /* none */
  args.out = (rpa_tensor){out, RPA_DTYPE_F32, 3, {T, QH, D}, {0}};
  rpa_status status = rpa_attention(ctx, &args);
  if (status != RPA_STATUS_OK) fprintf(stderr, "%s: %s\n", rpa_status_string(status), rpa_last_error());
  rpa_context_destroy(ctx);
  if (status != RPA_STATUS_OK) return 1;

  /* Sequence 0 sees three keys with equal scores: its output is the mean of V, 2. */
  printf("out[0][0] = %g %g %g %g\n", out[0][0][0], out[0][0][1], out[0][0][2], out[0][0][3]);
  return out[0][0][0] == 2.0f ? 0 : 1;
}
