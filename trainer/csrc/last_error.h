// How the C++ shims report a failure to Rust: a message in a thread-local buffer, valid
// on this thread until the next failing call (the Rust side copies it at once).
#pragma once

#include <cstring>

namespace flame_shim {
inline const char* remember(const char* message) {
  thread_local char last_error[1024];
  std::strncpy(last_error, message, sizeof(last_error) - 1);
  last_error[sizeof(last_error) - 1] = '\0';
  return last_error;
}
}  // namespace flame_shim
