#include "storage/image/image_sources.h"

#include <curl/curl.h>

#include <exception>
#include <mutex>

#include <cpprest/json.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "storage/exec/run_checked.h"

namespace hvagent::storage::image {
namespace {

bool IsHttp(absl::string_view url) { return absl::StartsWith(url, "http://") || absl::StartsWith(url, "https://"); }

struct Transfer {
  const ChunkFn* on_chunk = nullptr;
  const CancelFlag* cancel = nullptr;
  CURL* curl = nullptr;
  absl::Status status;
};

size_t OnWrite(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  if (t->cancel != nullptr && t->cancel->load()) {
    t->status = absl::CancelledError("cancelled");
    return 0;
  }
  curl_off_t length = -1;
  curl_easy_getinfo(t->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
  t->status = (*t->on_chunk)(absl::string_view(data, bytes), static_cast<int64_t>(length));
  return t->status.ok() ? bytes : 0;  // anything else aborts the transfer
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->cancel != nullptr && t->cancel->load() ? 1 : 0;
}

}  // namespace

absl::Status CheckUrl(absl::string_view field, const std::string& url, const std::vector<std::string>& prefixes) {
  if (!IsHttp(url)) return absl::InvalidArgumentError(absl::StrCat(field, ": must be an http:// or https:// URL"));
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '#' || c == '@' || c == '\\') {
      return absl::InvalidArgumentError(absl::StrCat(field, ": holds a character not allowed here (space, control, "
                                                     "'#', '@' or '\\')"));
    }
  }
  for (const std::string& p : prefixes) {
    if (!p.empty() && absl::StartsWith(url, p)) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat(field, ": '", url, "' is not under any of [images] allowed_sources (",
                   prefixes.empty() ? std::string("none configured") : absl::StrJoin(prefixes, ", "), ")"));
}

absl::Status FetchUrl(const std::string& url, const ChunkFn& on_chunk, const CancelFlag* cancel,
                      const FetchOptions& options) {
  static std::once_flag init;
  std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  Transfer t{&on_chunk, cancel, curl, absl::OkStatus()};
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  // http(s) only, and no redirects: a redirect could lead outside allowed_sources.
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, static_cast<long>(options.connect_timeout.count()));
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, static_cast<long>(options.stall_timeout.count()));
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnWrite);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, OnProgress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &t);
  // Identity: the checksum is over the bytes as served, never a decoded form.
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "hvagent-image-import");
  CURLcode rc = curl_easy_perform(curl);
  curl_easy_cleanup(curl);
  if (!t.status.ok()) return t.status;
  if (rc != CURLE_OK) {
    if (cancel != nullptr && cancel->load()) return absl::CancelledError("cancelled");
    const std::string why = error[0] != '\0' ? error : curl_easy_strerror(rc);
    const bool short_body = rc == CURLE_PARTIAL_FILE;
    return absl::UnavailableError(
        absl::StrCat("url: fetching ", url, " failed", short_body ? " (the body ended before its Content-Length)" : "",
                     ": ", why));
  }
  return absl::OkStatus();
}

absl::StatusOr<QcowInfo> ParseQemuImgInfo(const std::string& json) {
  try {
    web::json::value v = web::json::value::parse(json);
    if (!v.is_object() || !v.has_field("format") || !v.at("format").is_string() || !v.has_field("virtual-size") ||
        !v.at("virtual-size").is_number() || !v.at("virtual-size").as_number().is_uint64()) {
      return absl::InternalError("qemu-img info: no format or virtual-size");
    }
    QcowInfo info;
    info.format = v.at("format").as_string();
    info.virtual_size = v.at("virtual-size").as_number().to_uint64();
    for (const char* key : {"backing-filename", "full-backing-filename"}) {
      if (v.has_field(key) && v.at(key).is_string() && info.backing_file.empty()) info.backing_file = v.at(key).as_string();
    }
    if (v.has_field("format-specific") && v.at("format-specific").is_object()) {
      const auto& fs = v.at("format-specific");
      if (fs.has_field("data") && fs.at("data").is_object() && fs.at("data").has_field("data-file")) {
        const auto& df = fs.at("data").at("data-file");
        info.data_file = df.is_string() ? df.as_string() : "(set)";
      }
    }
    return info;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("qemu-img info: not JSON (", e.what(), ")"));
  }
}

absl::StatusOr<QcowInfo> QemuImg::Info(const std::string& file) const {
  Command cmd{.argv = {binary_, "info", "-U", "-f", "qcow2", "--output=json", file},
              .timeout = std::chrono::milliseconds(60000)};
  auto r = RunTool(runner_, cmd, "qemu-img info");
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::InvalidArgumentError(absl::StrCat("format: the image is not a readable qcow2 (qemu-img info: ",
                                                   ToolWords(*r, {}), ")"));
  }
  return ParseQemuImgInfo(r->stdout_text);
}

absl::Status QemuImg::ConvertToRaw(const std::string& file, const std::string& device,
                                   std::function<bool()> cancelled) const {
  // -n: the target exists (the slot); -t none: O_DIRECT writes; -W would reorder, not used.
  Command cmd{.argv = {binary_, "convert", "-U", "-f", "qcow2", "-O", "raw", "-n", "-t", "none", file, device},
              .timeout = timeout_,
              .cancelled = std::move(cancelled)};
  return RunChecked(runner_, cmd, "qemu-img convert", {});
}

absl::Status QemuImg::ConvertToQcow2(const std::string& device, const std::string& file,
                                     std::function<bool()> cancelled) const {
  // -T none: O_DIRECT reads of the device (no page cache churn); zero clusters stay unallocated.
  Command cmd{.argv = {binary_, "convert", "-U", "-f", "raw", "-T", "none", "-O", "qcow2", device, file},
              .timeout = timeout_,
              .cancelled = std::move(cancelled)};
  return RunChecked(runner_, cmd, "qemu-img convert", {});
}

}  // namespace hvagent::storage::image
