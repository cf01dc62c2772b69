// Reading the C enums of rpa.h from caller memory. A C caller may store any int in an enum field, and
// loading a value outside the enumerators into the C++ enum type is undefined behaviour, so fields are
// read as their integer type and checked before any cast.
#pragma once

#include <cstdint>
#include <cstring>

namespace rpa {

template <typename Enum>
int32_t enum_value(const Enum& field) {
  static_assert(sizeof(Enum) == sizeof(int32_t), "the C enums of rpa.h are int-sized");
  int32_t value;
  std::memcpy(&value, &field, sizeof value);
  return value;
}

}  // namespace rpa
