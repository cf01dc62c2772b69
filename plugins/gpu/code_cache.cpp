#include "plugins/gpu/code_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

namespace rpa_gpu {
namespace {

constexpr char kMagic[8] = {'R', 'P', 'A', 'C', 'O', 'D', 'E', '1'};

// The header before the code: magic, key length, code length, checksum of key and code.
struct Header {
  char magic[8];
  uint64_t key_bytes, code_bytes, checksum;
};

uint64_t checksum(const std::string& key, const char* code, size_t bytes) {
  return fnv1a(code, bytes, fnv1a(key.data(), key.size()));
}

bool make_directories(const std::string& path, std::string* why) {
  for (size_t slash = path.find('/', 1); ; slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      *why = "cannot create " + prefix + ": " + std::strerror(errno);
      return false;
    }
    if (slash == std::string::npos) return true;
  }
}

}  // namespace

uint64_t fnv1a(const void* data, size_t bytes, uint64_t hash) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * 0x100000001b3ull;
  return hash;
}

std::string code_cache_directory() {
  if (const char* path = std::getenv("RPA_KERNEL_CACHE")) return path;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/rpa/kernels";
  if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/rpa/kernels";
  return "";
}

std::string code_cache_path(const std::string& directory, const std::string& key) {
  std::string name = key;
  for (char& c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) c = '_';
  return directory + "/" + name + ".bin";
}

bool code_cache_read(const std::string& directory, const std::string& key, std::vector<char>* code) {
  if (directory.empty()) return false;
  std::ifstream file(code_cache_path(directory, key), std::ios::binary);
  if (!file) return false;
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  Header header{};
  if (bytes.size() < sizeof header) return false;
  std::memcpy(&header, bytes.data(), sizeof header);
  if (std::memcmp(header.magic, kMagic, sizeof kMagic) != 0 || header.key_bytes != key.size() ||
      bytes.size() - sizeof header != header.key_bytes + header.code_bytes ||
      key.compare(0, key.size(), bytes.data() + sizeof header, key.size()) != 0)
    return false;
  const char* body = bytes.data() + sizeof header + key.size();
  if (checksum(key, body, header.code_bytes) != header.checksum) return false;
  code->assign(body, body + header.code_bytes);
  return true;
}

bool code_cache_write(const std::string& directory, const std::string& key, const std::vector<char>& code,
                      std::string* why) {
  if (directory.empty()) return true;
  if (!make_directories(directory, why)) return false;
  const std::string path = code_cache_path(directory, key);
  static std::atomic<unsigned> writes{0};  // threads of one process write apart too
  const std::string temporary = path + ".tmp." + std::to_string(getpid()) + "." + std::to_string(writes++);
  Header header{};
  std::memcpy(header.magic, kMagic, sizeof kMagic);
  header.key_bytes = key.size();
  header.code_bytes = code.size();
  header.checksum = checksum(key, code.data(), code.size());
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    file.write(reinterpret_cast<const char*>(&header), sizeof header);
    file.write(key.data(), static_cast<std::streamsize>(key.size()));
    file.write(code.data(), static_cast<std::streamsize>(code.size()));
    if (!file.flush()) {
      std::remove(temporary.c_str());
      *why = "cannot write " + temporary;
      return false;
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    *why = "cannot rename " + temporary + " to " + path + ": " + std::strerror(errno);
    std::remove(temporary.c_str());
    return false;
  }
  return true;
}

}  // namespace rpa_gpu
