/*
 * A fake HIP runtime for the AMD plugin's loading tests (no AMD GPU, no ROCm needed): it exports the entry
 * points runtime_loader.cpp resolves, reports one device whose gcnArchName is $FAKE_HIP_ARCH (default
 * gfx90a:sramecc+:xnack-), treats host memory as device memory, and appends what it is asked to do to
 * $FAKE_HIP_LOG: each module load (an AMD ELF code object with its e_flags machine, or a fake hipRTC
 * result), each function looked up, each kernel launched. Kernels do not run.
 * Built with FAKE_MAJOR (runtime version FAKE_MAJOR.2), and FAKE_NO_LAUNCH to lack hipModuleLaunchKernel.
 */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef int hipError_t;
enum { hipSuccess = 0, hipErrorInvalidValue = 1, hipErrorInvalidImage = 200, hipErrorNotFound = 500 };

static void fake_log(const char* format, ...) {
  const char* path = getenv("FAKE_HIP_LOG");
  if (!path) return;
  FILE* file = fopen(path, "a");
  if (!file) return;
  va_list args;
  va_start(args, format);
  vfprintf(file, format, args);
  va_end(args);
  fputc('\n', file);
  fclose(file);
}

static const char* arch(void) {
  const char* value = getenv("FAKE_HIP_ARCH");
  return value ? value : "gfx90a:sramecc+:xnack-";
}

EXPORT hipError_t hipRuntimeGetVersion(int* version) {
  *version = FAKE_MAJOR * 10000000 + 2 * 100000;
  return hipSuccess;
}
EXPORT hipError_t hipGetDeviceCount(int* count) {
  *count = 1;
  return hipSuccess;
}
EXPORT hipError_t hipSetDevice(int device) { return device == 0 ? hipSuccess : hipErrorInvalidValue; }
EXPORT hipError_t hipDeviceGetAttribute(int* value, int attribute, int device) {
  (void)device;
  switch (attribute) {
    case 23: *value = 9; break;    /* compute capability major */
    case 61: *value = 0; break;    /* minor */
    case 63: *value = 104; break;  /* multiprocessors */
    case 87: *value = 64; break;   /* warp size */
    default: *value = 0;
  }
  return hipSuccess;
}
EXPORT hipError_t hipDeviceGetName(char* name, int length, int device) {
  (void)device;
  snprintf(name, (size_t)length, "Fake AMD GPU (ROCm %d)", FAKE_MAJOR);
  return hipSuccess;
}
EXPORT hipError_t hipDeviceTotalMem(size_t* bytes, int device) {
  (void)device;
  *bytes = (size_t)64 << 30;
  return hipSuccess;
}
/* ROCm 6 and 7 layout: gcnArchName at offset 1160 of hipDeviceProp_tR0600. */
EXPORT hipError_t hipGetDevicePropertiesR0600(void* properties, int device) {
  (void)device;
  memset(properties, 0, 1472);
  snprintf((char*)properties, 256, "Fake AMD GPU");
  snprintf((char*)properties + 1160, 256, "%s", arch());
  return hipSuccess;
}
EXPORT hipError_t hipDeviceSynchronize(void) { return hipSuccess; }
EXPORT const char* hipGetErrorName(hipError_t error) { return error == hipErrorNotFound ? "hipErrorNotFound" : "hipErrorFake"; }
EXPORT const char* hipGetErrorString(hipError_t error) { (void)error; return "fake runtime error"; }

EXPORT hipError_t hipMalloc(void** pointer, size_t bytes) {
  *pointer = malloc(bytes ? bytes : 1);
  return hipSuccess;
}
EXPORT hipError_t hipFree(void* pointer) {
  free(pointer);
  return hipSuccess;
}
EXPORT hipError_t hipHostMalloc(void** pointer, size_t bytes, unsigned flags) {
  (void)flags;
  return hipMalloc(pointer, bytes);
}
EXPORT hipError_t hipHostFree(void* pointer) { return hipFree(pointer); }
EXPORT hipError_t hipMemcpy(void* dst, const void* src, size_t bytes, int kind) {
  (void)kind;
  memmove(dst, src, bytes);
  return hipSuccess;
}
EXPORT hipError_t hipMemcpyAsync(void* dst, const void* src, size_t bytes, int kind, void* stream) {
  (void)stream;
  return hipMemcpy(dst, src, bytes, kind);
}

/* Streams and events are tokens. */
static char token;
EXPORT hipError_t hipStreamCreateWithFlags(void** stream, unsigned flags) {
  (void)flags;
  *stream = &token;
  return hipSuccess;
}
EXPORT hipError_t hipStreamDestroy(void* stream) { (void)stream; return hipSuccess; }
EXPORT hipError_t hipStreamSynchronize(void* stream) { (void)stream; return hipSuccess; }
EXPORT hipError_t hipStreamWaitEvent(void* stream, void* event, unsigned flags) {
  (void)stream, (void)event, (void)flags;
  return hipSuccess;
}
EXPORT hipError_t hipStreamIsCapturing(void* stream, int* status) {
  (void)stream;
  *status = 0; /* hipStreamCaptureStatusNone */
  return hipSuccess;
}
EXPORT hipError_t hipEventCreate(void** event) {
  *event = &token;
  return hipSuccess;
}
EXPORT hipError_t hipEventCreateWithFlags(void** event, unsigned flags) {
  (void)flags;
  return hipEventCreate(event);
}
EXPORT hipError_t hipEventDestroy(void* event) { (void)event; return hipSuccess; }
EXPORT hipError_t hipEventRecord(void* event, void* stream) { (void)event, (void)stream; return hipSuccess; }
EXPORT hipError_t hipEventSynchronize(void* event) { (void)event; return hipSuccess; }
EXPORT hipError_t hipEventElapsedTime(float* milliseconds, void* start, void* stop) {
  (void)start, (void)stop;
  *milliseconds = 0.0f;
  return hipSuccess;
}

/* A module: the image and its size (an ELF's ends with its section headers). */
typedef struct {
  const char* image;
  size_t size;
} Module;

EXPORT hipError_t hipModuleLoadData(void** module, const void* image) {
  const unsigned char* bytes = (const unsigned char*)image;
  Module* loaded = (Module*)malloc(sizeof(Module));
  loaded->image = (const char*)image;
  if (memcmp(bytes, "\177ELF", 4) == 0) {
    uint16_t machine, header_size, header_count;
    uint32_t flags;
    uint64_t header_offset;
    memcpy(&machine, bytes + 18, 2);
    memcpy(&header_offset, bytes + 40, 8);
    memcpy(&flags, bytes + 48, 4);
    memcpy(&header_size, bytes + 58, 2);
    memcpy(&header_count, bytes + 60, 2);
    if (machine != 224) { /* EM_AMDGPU */
      free(loaded);
      fake_log("load rejected: ELF machine %u", machine);
      return hipErrorInvalidImage;
    }
    loaded->size = (size_t)(header_offset + (uint64_t)header_size * header_count);
    fake_log("load elf mach=0x%x", flags & 0xff);
  } else if (memcmp(bytes, "FAKECO:", 7) == 0) {
    loaded->size = strlen((const char*)image);
    fake_log("load fake %.*s", (int)strcspn((const char*)image + 7, "\n"), (const char*)image + 7);
  } else {
    free(loaded);
    fake_log("load rejected: unknown image");
    return hipErrorInvalidImage;
  }
  *module = loaded;
  return hipSuccess;
}
EXPORT hipError_t hipModuleUnload(void* module) {
  free(module);
  return hipSuccess;
}
/* In an ELF code object: found when its string table holds the name. */
EXPORT hipError_t hipModuleGetFunction(void** function, void* module, const char* name) {
  const Module* loaded = (const Module*)module;
  const size_t length = strlen(name);
  for (size_t i = 0; i + length < loaded->size; ++i)
    if (memcmp(loaded->image + i, name, length) == 0 && loaded->image[i + length] == '\0' && (i == 0 || loaded->image[i - 1] == '\0')) {
      *function = strdup(name);
      return hipSuccess;
    }
  if (memcmp(loaded->image, "FAKECO:", 7) == 0) { /* fake hipRTC output: its source makes names by macros */
    *function = strdup(name);
    return hipSuccess;
  }
  fake_log("function missing: %s", name);
  return hipErrorNotFound;
}
#if !defined(FAKE_NO_LAUNCH)
EXPORT hipError_t hipModuleLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                        unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
  (void)gy, (void)gz, (void)by, (void)bz, (void)stream, (void)extra;
  fake_log("launch %s grid %u block %u shared %u args %s", (const char*)function, gx, bx, shared, params ? "packed" : "none");
  return params && gx > 0 ? hipSuccess : hipErrorInvalidValue;
}
#endif
EXPORT hipError_t hipModuleOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void* function, int threads, size_t shared) {
  (void)function, (void)threads, (void)shared;
  *blocks = 2;
  return hipSuccess;
}
