/*
 * A fake hipRTC (libhiprtc.so.N) for the AMD plugin's tests: "compiles" a program into
 * "FAKECO:<offload arch>\n<source>", which the fake runtime (fake_hip.c) loads, and appends each compile's
 * options to $FAKE_HIP_LOG. With $FAKE_HIPRTC_FAIL set, compiles fail with a log.
 */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef struct {
  char* source;
  char* code;
  const char* log;
} Program;

EXPORT int hiprtcVersion(int* major, int* minor) {
  *major = FAKE_MAJOR;
  *minor = 2;
  return 0;
}
EXPORT const char* hiprtcGetErrorString(int result) { return result ? "HIPRTC_ERROR_COMPILATION" : "HIPRTC_SUCCESS"; }
EXPORT int hiprtcCreateProgram(Program** program, const char* source, const char* name, int headers,
                               const char** contents, const char** names) {
  (void)name, (void)headers, (void)contents, (void)names;
  *program = (Program*)calloc(1, sizeof(Program));
  (*program)->source = strdup(source);
  (*program)->log = "";
  return 0;
}
EXPORT int hiprtcCompileProgram(Program* program, int count, const char** options) {
  const char* arch = "none";
  char line[1024] = "compile";
  for (int i = 0; i < count; ++i) {
    if (strncmp(options[i], "--offload-arch=", 15) == 0) arch = options[i] + 15;
    strncat(line, " ", sizeof line - strlen(line) - 1);
    strncat(line, options[i], sizeof line - strlen(line) - 1);
  }
  const char* path = getenv("FAKE_HIP_LOG");
  if (path) {
    FILE* file = fopen(path, "a");
    if (file) fprintf(file, "%s\n", line), fclose(file);
  }
  if (getenv("FAKE_HIPRTC_FAIL")) {
    program->log = "rpa_kernels.hip:1:1: error: fake compile error";
    return 6;
  }
  program->code = (char*)malloc(strlen(arch) + strlen(program->source) + 16);
  sprintf(program->code, "FAKECO:%s\n%s", arch, program->source);
  return 0;
}
EXPORT int hiprtcGetProgramLogSize(Program* program, size_t* bytes) {
  *bytes = strlen(program->log) + 1;
  return 0;
}
EXPORT int hiprtcGetProgramLog(Program* program, char* log) {
  strcpy(log, program->log);
  return 0;
}
EXPORT int hiprtcGetCodeSize(Program* program, size_t* bytes) {
  *bytes = program->code ? strlen(program->code) + 1 : 0;
  return 0;
}
EXPORT int hiprtcGetCode(Program* program, char* code) {
  strcpy(code, program->code);
  return 0;
}
EXPORT int hiprtcDestroyProgram(Program** program) {
  free((*program)->source);
  free((*program)->code);
  free(*program);
  *program = NULL;
  return 0;
}
