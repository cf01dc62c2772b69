// The golden-reference commands of `rpa`: make-case, run, check, suite make / suite check (golden/).
#pragma once

#include <CLI/CLI.hpp>

// Adds the subcommands to `app`. Their callbacks throw CLI::RuntimeError with the exit status: 1 for a
// failed check, 2 for bad input.
void rpa_case_commands_register(CLI::App& app);
