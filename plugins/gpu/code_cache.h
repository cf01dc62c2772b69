// The disk cache of code objects compiled at run time (hipRTC, NVRTC), so only a device's first use
// compiles. An entry is one file per key (the source's hash, the architecture, the runtime and compiler
// versions), in RPA_KERNEL_CACHE if set (empty: no cache), else $XDG_CACHE_HOME/rpa/kernels, else
// $HOME/.cache/rpa/kernels. Entries are written to a temporary file and renamed into place, so
// concurrent processes never see half a file; each carries its key, size and a checksum, so a corrupt or
// foreign file reads as a miss (and is replaced by the next compile).
#pragma once

#include <stdint.h>

#include <string>
#include <vector>

namespace rpa_gpu {

// FNV-1a, 64 bits: the source hash of keys and the entries' checksum (corruption, not adversaries).
uint64_t fnv1a(const void* data, size_t bytes, uint64_t hash = 0xcbf29ce484222325ull);

// The cache directory, or empty when caching is off.
std::string code_cache_directory();

// The file of `key` (a readable string; characters outside [A-Za-z0-9._-] become '_').
std::string code_cache_path(const std::string& directory, const std::string& key);

// The cached code of `key`, or false (absent, unreadable, corrupt, or another key's).
bool code_cache_read(const std::string& directory, const std::string& key, std::vector<char>* code);

// Stores `code` under `key`; false with `why` when it cannot (the caller goes on uncached).
bool code_cache_write(const std::string& directory, const std::string& key, const std::vector<char>& code,
                      std::string* why);

}  // namespace rpa_gpu
