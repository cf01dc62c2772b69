// Device metadata (rpa_problem::metadata_memory): a plan cannot see the metadata's values, so its work is
// a grid of tile slots fixed by the plan's bounds, and each slot is resolved at run time, on the device,
// into the tile the planner (planner.h) would make for its sequence, or into nothing when the sequence
// has no such tile or broke a rule. Plain C++ for host and device: tests/plugins/test_gpu_planner.cpp
// resolves every slot on the CPU and checks the cover.
#pragma once

#include <stdint.h>

#include "core/dtype.h"  // RPA_HOST_DEVICE
#include "plugins/gpu/tile.h"

namespace rpa_gpu {

// Which slots a kernel launch resolves: the split tiles of decode or other sequences, or their merges.
enum GridKind : int32_t { kGridDecode, kGridAttention, kGridMergeDecode, kGridMergeAttention };

// One kind of tiles: unit = (row chunk, kv head, head chunk), each with `splits` split slots. A decode
// sequence is one row chunk (chunk = sequence). The other kind's chunks are listed across sequences
// (DeviceGrid::row_chunks), so its slots follow the batch's tokens, not num_seqs * max_query_len; or,
// where that product is no more (DeviceGrid::direct), each slot is a (chunk, sequence) pair itself.
struct GridPart {
  int32_t heads, head_chunks;  // q heads per tile; tiles across a kv head's group
  int32_t rows, row_chunks;    // query rows per tile; the most row chunks of one sequence (0: no unit)
  int32_t chunks;              // row chunks of all sequences at most (direct: num_seqs * row_chunks)
  int32_t splits;              // split slots per unit (1: the tile writes the output itself)
  int32_t chunk_keys;          // keys of every split but a unit's last (a multiple of the key tile)
  int64_t partial_base;        // first partial row of this kind's units
};

// A row chunk of the non-decode kind as prepare_metadata_kernel lists it: 16 bytes, so a slot resolves its
// tile with one load (searching the sequence of a chunk took dependent loads at the start of every block).
struct alignas(16) RowChunk {
  int32_t seq;  // -1: no row chunk this run
  int32_t row_begin, rows, first_pos;
};

// Buckets of prepare_metadata_kernel's counting sort of the row chunks by their keys (DeviceGrid::key_shift).
constexpr int kKeyBuckets = 1024;

struct DeviceGrid {
  const int32_t* context_lens;     // the caller's device metadata
  const int32_t* query_start_loc;
  const int32_t* seq_ok;           // per sequence: nonzero when it follows every rule (written on the device)
  // [attention.chunks]: the row chunks of the non-decode kind of all sequences that follow the rules, most
  // keys first as make_tile_plan orders its tiles (to the key bucket: keys >> key_shift), then -1 (device).
  // Unused when direct.
  const RowChunk* row_chunks;
  int32_t num_seqs, kv_heads, group, window;
  int32_t decode_eligible;         // one-token sequences take the decode part
  // The non-decode slots are (chunk from a sequence's last, sequence) pairs, resolved from the metadata
  // (unit_tile), so no kernel lists them first; each checks its own sequence (fetch_tile). Chosen where
  // the bounds give no more such pairs than a list would hold: few sequences, a tight max_query_len. It
  // takes one-token sequences too (decode_eligible 0, no decode part), so nothing runs beside its slots.
  int32_t direct;
  int32_t key_shift;               // the bound max_context_len >> key_shift is below kKeyBuckets
  GridPart decode, attention;
};

RPA_HOST_DEVICE inline int64_t grid_units(const DeviceGrid& g, const GridPart& part) {
  return int64_t(part.chunks) * g.kv_heads * part.head_chunks;
}

// A sequence's metadata as the device reads it: rows [row_begin, row_end), `context` keys.
struct SequenceRows {
  int32_t row_begin, row_end, context;
};

RPA_HOST_DEVICE inline SequenceRows sequence_rows(const DeviceGrid& g, int32_t seq) {
  return SequenceRows{g.query_start_loc[seq], g.query_start_loc[seq + 1], g.context_lens[seq]};
}

// Whether the sequence is one token for the decode slots (which check it themselves: fetch_tile).
RPA_HOST_DEVICE inline bool takes_decode(const DeviceGrid& g, const SequenceRows& s) {
  return g.decode_eligible && int64_t(s.row_end) - s.row_begin == 1;
}

// Row chunks of the non-decode kind that a sequence has this run (0 when it broke a rule: !seq_ok).
RPA_HOST_DEVICE inline int32_t attention_chunks(const DeviceGrid& g, const SequenceRows& s, int32_t seq_ok) {
  if (!seq_ok || takes_decode(g, s)) return 0;
  return (s.row_end - s.row_begin + g.attention.rows - 1) / g.attention.rows;  // seq_ok: 0 <= q_len <= T
}

// Blocks of a launch of `kind`.
RPA_HOST_DEVICE inline int64_t grid_blocks(const DeviceGrid& g, GridKind kind) {
  const bool decode = kind == kGridDecode || kind == kGridMergeDecode;
  const GridPart& part = decode ? g.decode : g.attention;
  const bool merge = kind == kGridMergeDecode || kind == kGridMergeAttention;
  if (merge && part.splits < 2) return 0;
  return grid_units(g, part) * (merge ? 1 : part.splits);
}

// Row chunk `r` (< attention_chunks) of sequence `seq`, whose tile make_tile_plan makes (heads aside).
RPA_HOST_DEVICE inline RowChunk row_chunk(const DeviceGrid& g, int32_t seq, const SequenceRows& s, int32_t r) {
  const int32_t q_len = s.row_end - s.row_begin, row = r * g.attention.rows;
  RowChunk chunk;
  chunk.seq = seq;
  chunk.row_begin = s.row_begin + row;
  chunk.rows = g.attention.rows < q_len - row ? g.attention.rows : q_len - row;
  chunk.first_pos = s.context - q_len + row;
  return chunk;
}

// Keys visible to some row of rows from position first_pos on: (first_pos - window, last_pos], clipped at 0.
RPA_HOST_DEVICE inline int32_t first_key(const DeviceGrid& g, int32_t first_pos) {
  return g.window > 0 && first_pos - g.window + 1 > 0 ? first_pos - g.window + 1 : 0;
}

// The sort bucket of a row chunk: its keys >> key_shift (the largest bucket for more than the bound).
RPA_HOST_DEVICE inline int32_t key_bucket(const DeviceGrid& g, const RowChunk& chunk) {
  const int32_t bucket = (chunk.first_pos + chunk.rows - first_key(g, chunk.first_pos)) >> g.key_shift;
  return bucket < kKeyBuckets ? bucket : kKeyBuckets - 1;
}

// The sequence of a non-decode unit's row chunk `index` in a direct grid; chunk index / num_seqs of it,
// counted from its last (direct_chunk), so every sequence's last chunks, which see the most keys, start first.
RPA_HOST_DEVICE inline int32_t direct_sequence(const DeviceGrid& g, int32_t index) { return index % g.num_seqs; }

// The row chunk of `index` in a direct grid (its sequence's rows `s`): false when the sequence has fewer.
RPA_HOST_DEVICE inline bool direct_chunk(const DeviceGrid& g, int32_t index, const SequenceRows& s, RowChunk& chunk) {
  const int32_t seq = direct_sequence(g, index), chunks = attention_chunks(g, s, 1), from_last = index / g.num_seqs;
  if (from_last >= chunks) return false;
  chunk = row_chunk(g, seq, s, chunks - 1 - from_last);
  return true;
}

// The whole (unsplit) tile of `unit`, as make_tile_plan makes it; false when there is none. Decode units
// are sequences; the others' row chunks come from the list (row_chunks), so a slot reads one record, or
// in a direct grid from their sequence's metadata.
RPA_HOST_DEVICE inline bool unit_tile(const DeviceGrid& g, const GridPart& part, bool decode, int64_t unit, Tile& tile,
                                      bool use_seq_ok) {
  const int32_t head_chunk = int32_t(unit % part.head_chunks);
  unit /= part.head_chunks;
  const int32_t kv_head = int32_t(unit % g.kv_heads);
  const int32_t index = int32_t(unit / g.kv_heads);
  RowChunk chunk;
  if (decode) {
    if (use_seq_ok && !g.seq_ok[index]) return false;
    const SequenceRows s = sequence_rows(g, index);
    if (!takes_decode(g, s)) return false;
    chunk.seq = index, chunk.row_begin = s.row_begin, chunk.rows = 1, chunk.first_pos = s.context - 1;
  } else if (g.direct) {
    const int32_t seq = direct_sequence(g, index);
    if (use_seq_ok && !g.seq_ok[seq]) return false;
    if (!direct_chunk(g, index, sequence_rows(g, seq), chunk)) return false;
  } else {
    chunk = g.row_chunks[index];
    if (chunk.seq < 0) return false;
  }
  const int32_t head = head_chunk * part.heads;
  tile.seq = chunk.seq;
  tile.head_begin = kv_head * g.group + head;
  tile.heads = part.heads < g.group - head ? part.heads : g.group - head;
  tile.row_begin = chunk.row_begin;
  tile.rows = chunk.rows;
  tile.first_pos = chunk.first_pos;
  tile.key_begin = first_key(g, chunk.first_pos);
  tile.key_end = tile.first_pos + tile.rows;
  tile.partial = -1;
  tile.splits = 1;
  return true;
}

// Slot `block` of a launch of `kind` as a tile; false when the slot has no work this run. A unit uses
// as many splits as its keys need (at most part.splits; its last split takes the rest of the keys), and
// a merge exists only for units split in two or more. Without use_seq_ok a broken sequence gets tiles too
// (from whatever its metadata holds): the caller checks them before reading anything through them.
// use_seq_ok reads DeviceGrid::seq_ok for decode and direct units (a listed chunk follows the rules).
RPA_HOST_DEVICE inline bool grid_tile(const DeviceGrid& g, GridKind kind, int64_t block, Tile& tile,
                                      bool use_seq_ok = true) {
  const bool decode = kind == kGridDecode || kind == kGridMergeDecode;
  const bool merge = kind == kGridMergeDecode || kind == kGridMergeAttention;
  const GridPart part = decode ? g.decode : g.attention;  // a copy: selecting a reference would put the kernel parameters in local memory
  const int64_t unit = merge ? block : block / part.splits;
  if (!unit_tile(g, part, decode, unit, tile, use_seq_ok)) return false;
  const int32_t keys = tile.key_end - tile.key_begin;
  int32_t used = (keys + part.chunk_keys - 1) / part.chunk_keys;
  used = used < 1 ? 1 : used > part.splits ? part.splits : used;
  const int64_t unit_partial = part.partial_base + unit * part.splits * int64_t(part.heads) * part.rows;
  if (merge) {
    if (used < 2) return false;
    tile.partial = int32_t(unit_partial);
    tile.splits = used;
    return true;
  }
  const int32_t split = int32_t(block % part.splits);
  if (split >= used) return false;
  if (used == 1) return true;
  const int32_t begin = tile.key_begin + split * part.chunk_keys;
  if (split + 1 < used) tile.key_end = begin + part.chunk_keys;
  tile.key_begin = begin;
  tile.partial = int32_t(unit_partial + int64_t(split) * tile.heads * tile.rows);
  return true;
}

}  // namespace rpa_gpu
