#include "common/host_port.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace switchyard {

absl::StatusOr<HostPort> SplitHostPort(const std::string& listen, const std::string& flag) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", listen, ": want HOST:PORT, e.g. 127.0.0.1:50051"));
  }
  HostPort out;
  out.host = listen.substr(0, colon);
  if (out.host.size() >= 2 && out.host.front() == '[' && out.host.back() == ']') {
    out.host = out.host.substr(1, out.host.size() - 2);
  }
  const std::string port_text = listen.substr(colon + 1);
  out.port = -1;
  if (!port_text.empty() && port_text.size() <= 6 &&
      port_text.find_first_not_of("0123456789") == std::string::npos) {
    out.port = std::stoi(port_text);
  }
  if (out.port < 0 || out.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", listen, ": port ", port_text,
                                                   " is not in 1-65535 (0 picks a free port)"));
  }
  return out;
}

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

}  // namespace switchyard
