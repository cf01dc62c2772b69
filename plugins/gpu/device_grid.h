// Device metadata (rpa_problem::metadata_memory): a plan cannot see the metadata's values, so its work is
// a grid of tile slots fixed by the plan's bounds, and each slot is resolved at run time, on the device,
// into the tile the planner (planner.h) would make for its sequence, or into nothing when the sequence
// has no such tile or broke a rule. Plain C++ for host and device: tests/plugins/test_gpu_planner.cpp
// resolves every slot on the CPU and checks the cover.
#pragma once

#include <stdint.h>

#include "core/dtype.h"  // RPA_HOST_DEVICE
#include "plugins/gpu/divisor.h"
#include "plugins/gpu/tile.h"

namespace rpa_gpu {

// Which slots a kernel launch resolves: the split tiles of decode or other sequences, or their merges.
enum GridKind : int32_t { kGridDecode, kGridAttention, kGridMergeDecode, kGridMergeAttention };
RPA_HOST_DEVICE inline bool is_decode(GridKind kind) { return kind == kGridDecode || kind == kGridMergeDecode; }
RPA_HOST_DEVICE inline bool is_merge(GridKind kind) { return kind == kGridMergeDecode || kind == kGridMergeAttention; }

// One kind of tiles: unit = (row chunk, kv head, head chunk), each with `splits` split slots. A decode
// sequence is one row chunk (chunk = sequence). The other kind's chunks are listed across sequences
// (DeviceGrid::row_chunks), so its slots follow the batch's tokens, not num_seqs * max_query_len; or,
// where that product is no more (DeviceGrid::direct), each slot is a (chunk, sequence) pair itself.
// Every slot divides by the sizes it is resolved with: they are Divisors.
struct GridPart {
  int32_t heads;           // q heads per tile
  Divisor head_chunks;     // tiles across a kv head's group
  Divisor rows;            // query rows per tile
  int32_t row_chunks;      // the most row chunks of one sequence (0: no unit)
  int32_t chunks;          // row chunks of all sequences at most (direct: num_seqs * row_chunks)
  Divisor splits;          // split slots per unit (1: the tile writes the output itself)
  Divisor chunk_keys;      // keys of every split but a unit's last (a multiple of the key tile)
  int64_t partial_base;    // first partial row of this kind's units
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
  Divisor num_seqs, kv_heads;
  int32_t group, window;
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
  return g.attention.rows.divide_up(s.row_end - s.row_begin);  // seq_ok: 0 <= q_len <= T
}

// Blocks of a launch of `kind`.
RPA_HOST_DEVICE inline int64_t grid_blocks(const DeviceGrid& g, GridKind kind) {
  const GridPart& part = is_decode(kind) ? g.decode : g.attention;
  const bool merge = is_merge(kind);
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

// A non-decode unit's row chunk `index` in a direct grid is chunk index / num_seqs, counted from its last,
// of sequence index % num_seqs, so every sequence's last chunks, which see the most keys, start first.
// That chunk of sequence `seq` (its rows `s`): false when the sequence has fewer.
RPA_HOST_DEVICE inline bool direct_chunk(const DeviceGrid& g, int32_t seq, int32_t from_last, const SequenceRows& s,
                                         RowChunk& chunk) {
  const int32_t chunks = attention_chunks(g, s, 1);
  if (from_last >= chunks) return false;
  chunk = row_chunk(g, seq, s, chunks - 1 - from_last);
  return true;
}

// Slot `block` (< 2^31) of a launch of one part as its unit, (row chunk or sequence `index`, kv head,
// head chunk), and split; a merge launch has one slot a unit. The split runs fastest, then the head chunk.
struct GridSlot {
  int32_t unit, index, kv_head, head_chunk, split;
};
RPA_HOST_DEVICE inline GridSlot grid_slot(const DeviceGrid& g, GridKind kind, int32_t block) {
  // Values, not a selected reference to a part: that would put the kernel parameters in local memory.
  const bool decode = is_decode(kind);
  const Divisor splits = decode ? g.decode.splits : g.attention.splits;
  const Divisor head_chunks = decode ? g.decode.head_chunks : g.attention.head_chunks;
  GridSlot slot;
  slot.unit = block, slot.split = 0;
  if (!is_merge(kind)) {
    const auto [unit, split] = splits.divide_with_remainder(block);
    slot.unit = unit, slot.split = split;
  }
  const auto [head_unit, head_chunk] = head_chunks.divide_with_remainder(slot.unit);
  const auto [index, kv_head] = g.kv_heads.divide_with_remainder(head_unit);
  slot.index = index, slot.kv_head = kv_head, slot.head_chunk = head_chunk;
  return slot;
}

// The whole (unsplit) tile of a slot's unit, as make_tile_plan makes it; false when there is none. Decode units
// are sequences; the others' row chunks come from the list (row_chunks), so a slot reads one record, or
// in a direct grid from their sequence's metadata.
RPA_HOST_DEVICE inline bool unit_tile(const DeviceGrid& g, const GridPart& part, bool decode, const GridSlot& slot,
                                      Tile& tile, bool use_seq_ok) {
  const int32_t index = slot.index;
  RowChunk chunk;
  if (decode) {
    if (use_seq_ok && !g.seq_ok[index]) return false;
    const SequenceRows s = sequence_rows(g, index);
    if (!takes_decode(g, s)) return false;
    chunk.seq = index, chunk.row_begin = s.row_begin, chunk.rows = 1, chunk.first_pos = s.context - 1;
  } else if (g.direct) {
    const auto [from_last, seq] = g.num_seqs.divide_with_remainder(index);
    if (use_seq_ok && !g.seq_ok[seq]) return false;
    if (!direct_chunk(g, seq, from_last, sequence_rows(g, seq), chunk)) return false;
  } else {
    chunk = g.row_chunks[index];
    if (chunk.seq < 0) return false;
  }
  const int32_t head = slot.head_chunk * part.heads;
  tile.seq = chunk.seq;
  tile.head_begin = slot.kv_head * g.group + head;
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

// A slot (grid_slot) of a launch of `kind` as a tile; false when the slot has no work this run. A unit uses
// as many splits as its keys need (at most part.splits; its last split takes the rest of the keys), and
// a merge exists only for units split in two or more. Without use_seq_ok a broken sequence gets tiles too
// (from whatever its metadata holds): the caller checks them before reading anything through them.
// use_seq_ok reads DeviceGrid::seq_ok for decode and direct units (a listed chunk follows the rules).
RPA_HOST_DEVICE inline bool slot_tile(const DeviceGrid& g, GridKind kind, const GridSlot& slot, Tile& tile,
                                      bool use_seq_ok) {
  const bool decode = is_decode(kind), merge = is_merge(kind);
  const GridPart part = decode ? g.decode : g.attention;  // a copy: selecting a reference would put the kernel parameters in local memory
  if (!unit_tile(g, part, decode, slot, tile, use_seq_ok)) return false;
  int32_t used = part.chunk_keys.divide_up(tile.key_end - tile.key_begin);
  used = used < 1 ? 1 : used > part.splits ? int32_t(part.splits) : used;
  const int64_t unit_partial = part.partial_base + int64_t(slot.unit) * part.splits * int64_t(part.heads) * part.rows;
  if (merge) {
    if (used < 2) return false;
    tile.partial = int32_t(unit_partial);
    tile.splits = used;
    return true;
  }
  const int32_t split = slot.split;
  if (split >= used) return false;
  if (used == 1) return true;
  const int32_t begin = tile.key_begin + split * part.chunk_keys;
  if (split + 1 < used) tile.key_end = begin + part.chunk_keys;
  tile.key_begin = begin;
  tile.partial = int32_t(unit_partial + int64_t(split) * tile.heads * tile.rows);
  return true;
}

// Slot `block` (< 2^31) of a launch of `kind` as a tile: slot_tile of its grid_slot.
RPA_HOST_DEVICE inline bool grid_tile(const DeviceGrid& g, GridKind kind, int32_t block, Tile& tile,
                                      bool use_seq_ok = true) {
  return slot_tile(g, kind, grid_slot(g, kind, block), tile, use_seq_ok);
}

}  // namespace rpa_gpu
