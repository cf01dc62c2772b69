// The safetensors format (what PyTorch, JAX and Hugging Face write): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the tensors' bytes. The reader rejects every malformed file with a FormatError naming the tensor
// and the problem, and reads only the bytes the header declares.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace rpa::golden {

struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct StTensor {
  std::string name, dtype;  // dtype as safetensors spells it: F32, F16, BF16, I32, ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // row-major, little-endian
};

struct StFile {
  std::map<std::string, std::string> metadata;
  std::vector<StTensor> tensors;  // in the order of their data
  const StTensor* find(const std::string& name) const;
};

// Bytes of one element of a safetensors dtype, 0 for a name the format does not define.
int st_dtype_size(const std::string& dtype);

// Parses a whole file held in memory. This is the entry point to fuzz: it throws FormatError (and
// nothing else) for any input that is not a well-formed file, and never reads outside [data, data+size).
StFile parse_safetensors(const uint8_t* data, size_t size);

// Reads a file: the header first, then exactly the data it declares (FormatError when the file is
// shorter or longer; std::runtime_error when it cannot be opened).
StFile read_safetensors(const std::string& path);

// The file's bytes (header padded with spaces to a multiple of 8, tensors in order) and its writer.
std::vector<uint8_t> serialize_safetensors(const StFile& file);
void write_safetensors(const std::string& path, const StFile& file);

}  // namespace rpa::golden
