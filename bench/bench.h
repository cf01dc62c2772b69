// `rpa bench`: validates every available backend against the reference, then times the standard
// workloads and sets each figure against this machine's limits measured in the same run.
#pragma once

#include <CLI/CLI.hpp>

// Adds the `bench` subcommand to `app`; it runs from the subcommand's callback.
void rpa_bench_register(CLI::App& app);
