#include "golden/safetensors.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

namespace rpa::golden {
namespace {

using nlohmann::json;

// The format's own cap on the header, which also bounds what a hostile length can make us allocate.
constexpr uint64_t kMaxHeader = 100u << 20;

struct Entry {
  std::string name, dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

struct Header {
  std::map<std::string, std::string> metadata;
  std::vector<Entry> entries;  // sorted by begin
  uint64_t data_bytes = 0;     // what the entries cover
};

std::string named(const std::string& name) { return "tensor '" + name + "'"; }

uint64_t read_le64(const uint8_t* p) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | p[i];
  return n;
}

// The header length from the first 8 bytes of a file of `file_size` bytes.
uint64_t header_length(const uint8_t* prefix, uint64_t file_size) {
  if (file_size < 8)
    throw FormatError("truncated: " + std::to_string(file_size) + " bytes, fewer than the 8-byte header length");
  const uint64_t n = read_le64(prefix);
  if (n > file_size - 8)
    throw FormatError("header length " + std::to_string(n) + " runs past the end of the file (" +
                      std::to_string(file_size) + " bytes)");
  if (n > kMaxHeader) throw FormatError("header length " + std::to_string(n) + " exceeds the format's 100 MB limit");
  return n;
}

Entry parse_entry(const std::string& name, const json& value) {
  if (!value.is_object()) throw FormatError(named(name) + ": not an object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!value.contains(key)) throw FormatError(named(name) + ": no " + key);
  for (const auto& [key, unused] : value.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      throw FormatError(named(name) + ": unknown field '" + key + "'");
  Entry e;
  e.name = name;
  if (!value["dtype"].is_string()) throw FormatError(named(name) + ": dtype is not a string");
  e.dtype = value["dtype"].get<std::string>();
  const int size = st_dtype_size(e.dtype);
  if (size == 0) throw FormatError(named(name) + ": unknown dtype '" + e.dtype + "'");
  const json& shape = value["shape"];
  if (!shape.is_array()) throw FormatError(named(name) + ": shape is not an array");
  uint64_t count = 1;
  bool overflow = false;
  for (const json& dim : shape) {
    if (!dim.is_number_unsigned() || dim.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw FormatError(named(name) + ": shape holds " + dim.dump() + ", not a non-negative integer");
    const uint64_t d = dim.get<uint64_t>();
    if (d != 0 && count > std::numeric_limits<uint64_t>::max() / d) overflow = true;
    else count *= d;
    e.shape.push_back(static_cast<int64_t>(d));
  }
  const json& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
    throw FormatError(named(name) + ": data_offsets is not a pair of non-negative integers");
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  if (e.end < e.begin)
    throw FormatError(named(name) + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                      "] end before they begin");
  if (overflow || count > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(size) ||
      count * static_cast<uint64_t>(size) != e.end - e.begin)
    throw FormatError(named(name) + ": shape " + shape.dump() + " of " + e.dtype + " does not match its " +
                      std::to_string(e.end - e.begin) + " bytes of data_offsets");
  return e;
}

// Parses and checks the header against `data_bytes`, the bytes that follow it (the file's rest).
Header parse_header(const char* text, size_t length, uint64_t data_bytes) {
  // nlohmann keeps the last of duplicate keys; the callback sees every key of the top-level object first.
  std::set<std::string> seen;
  std::string duplicate;
  const json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    // A header nests 3 deep (object, entry, shape); deeper input is not one and could exhaust the stack.
    if (depth > 8) throw FormatError("header nests deeper than a safetensors header");
    if (event == json::parse_event_t::key && depth == 1 && !seen.insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  json header;
  try {
    header = json::parse(text, text + length, on_event);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e99999
    throw FormatError(std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) throw FormatError(named(duplicate) + ": named twice in the header");
  if (!header.is_object()) throw FormatError("header is not a JSON object");
  Header h;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) throw FormatError("__metadata__ is not an object");
      for (const auto& [key, item] : value.items()) {
        if (!item.is_string()) throw FormatError("__metadata__: value of '" + key + "' is not a string");
        h.metadata[key] = item.get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(name, value));
  }
  std::sort(h.entries.begin(), h.entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  for (size_t i = 0; i < h.entries.size(); ++i) {
    const Entry& e = h.entries[i];
    if (e.end > data_bytes)
      throw FormatError(named(e.name) + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                        "] run past the end of the data (" + std::to_string(data_bytes) + " bytes)");
    if (i > 0 && e.begin < h.entries[i - 1].end)
      throw FormatError(named(e.name) + ": its bytes overlap those of " + named(h.entries[i - 1].name));
    if (e.begin > covered)
      throw FormatError("bytes " + std::to_string(covered) + ".." + std::to_string(e.begin) +
                        " of the data belong to no tensor (before " + named(e.name) + ")");
    covered = std::max(covered, e.end);
  }
  h.data_bytes = covered;
  return h;
}

StFile assemble(Header&& header, const uint8_t* data) {
  StFile file;
  file.metadata = std::move(header.metadata);
  for (Entry& e : header.entries)
    file.tensors.push_back({std::move(e.name), std::move(e.dtype), std::move(e.shape),
                            std::vector<uint8_t>(data + e.begin, data + e.end)});
  return file;
}

std::string trailing_bytes_message(uint64_t extra) {
  return std::to_string(extra) + " bytes after the last tensor's data belong to no tensor";
}

}  // namespace

const StTensor* StFile::find(const std::string& name) const {
  for (const StTensor& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

int st_dtype_size(const std::string& dtype) {
  static const std::map<std::string, int> sizes{
      {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4}, {"I64", 8}, {"U64", 8}, {"F64", 8}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

StFile parse_safetensors(const uint8_t* data, size_t size) {
  const uint64_t n = header_length(data, size);
  const uint64_t data_bytes = size - 8 - n;
  Header header = parse_header(reinterpret_cast<const char*>(data + 8), n, data_bytes);
  if (header.data_bytes != data_bytes) throw FormatError(trailing_bytes_message(data_bytes - header.data_bytes));
  return assemble(std::move(header), data + 8 + n);
}

StFile read_safetensors(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  if (std::fseek(f.get(), 0, SEEK_END) != 0) throw std::runtime_error("cannot seek in " + path);
  const long end = std::ftell(f.get());
  if (end < 0) throw std::runtime_error("cannot size " + path);
  const uint64_t file_size = static_cast<uint64_t>(end);
  std::rewind(f.get());
  uint8_t prefix[8] = {};
  const size_t got = std::fread(prefix, 1, 8, f.get());
  const uint64_t n = header_length(prefix, got < 8 ? got : file_size);
  std::vector<char> text(n);
  if (std::fread(text.data(), 1, n, f.get()) != n) throw FormatError("truncated while reading the header");
  Header header = parse_header(text.data(), n, file_size - 8 - n);
  if (header.data_bytes != file_size - 8 - n)
    throw FormatError(trailing_bytes_message(file_size - 8 - n - header.data_bytes));
  std::vector<uint8_t> data(header.data_bytes);
  if (std::fread(data.data(), 1, data.size(), f.get()) != data.size())
    throw FormatError("truncated while reading the tensors' data");
  return assemble(std::move(header), data.data());
}

std::vector<uint8_t> serialize_safetensors(const StFile& file) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  uint64_t offset = 0;
  for (const StTensor& t : file.tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::vector<uint8_t> bytes(8 + text.size() + offset);
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  std::memcpy(bytes.data() + 8, text.data(), text.size());
  size_t at = 8 + text.size();
  for (const StTensor& t : file.tensors) {
    if (!t.bytes.empty()) std::memcpy(bytes.data() + at, t.bytes.data(), t.bytes.size());
    at += t.bytes.size();
  }
  return bytes;
}

void write_safetensors(const std::string& path, const StFile& file) {
  const std::vector<uint8_t> bytes = serialize_safetensors(file);
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace rpa::golden
