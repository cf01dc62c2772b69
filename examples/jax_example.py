"""rpa from JAX: ejKernel's ragged_page_attention_v2 under jit, with rpa's import instead of ejKernel's."""
import jax
import jax.numpy as jnp

from rpa.jax import ragged_page_attention_v2

P, page, KVH, QH, D = 32, 16, 4, 16, 128
key = jax.random.PRNGKey(0)
kv_pages = jax.random.normal(key, (P, page, 2 * KVH, D), jnp.bfloat16)
queries = jax.random.normal(jax.random.PRNGKey(1), (8, QH, D), jnp.bfloat16)
context_lens = jnp.array([40, 9, 120], jnp.int32)
block_tables = jnp.arange(24, dtype=jnp.int32).reshape(3, 8)
query_start_loc = jnp.array([0, 6, 7, 8], jnp.int32)
num_seqs = jnp.array([3], jnp.int32)  # a device array: changing it does not retrace


@jax.jit
def step(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs):
    return ragged_page_attention_v2(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs,
                                    sliding_window=64, logits_soft_cap=30.0)


out = step(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs)
print(out.shape, out.dtype, out.devices())
