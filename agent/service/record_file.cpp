#include "agent/service/record_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"

namespace hvagent::service {
namespace {

absl::Status Errno(const std::string& what) {
  int e = errno;
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(e)));
}

absl::Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno(absl::StrCat("write ", path));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string DirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RecordFile>> RecordFile::Open(const std::string& path) {
  int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Errno(absl::StrCat("open ", path));
  return std::unique_ptr<RecordFile>(new RecordFile(path, fd));
}

RecordFile::~RecordFile() { close(fd_); }

absl::StatusOr<std::string> RecordFile::Line(const google::protobuf::Message& record) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  auto s = google::protobuf::util::MessageToJsonString(record, &json, opts);
  if (!s.ok()) return absl::InternalError(absl::StrCat("encode record: ", std::string(s.message())));
  json.push_back('\n');
  return json;
}

absl::StatusOr<size_t> RecordFile::Load(const google::protobuf::Message& prototype,
                                        const std::function<void(const google::protobuf::Message&)>& each) const {
  std::ifstream in(path_);
  if (!in) return absl::InternalError(absl::StrCat("read ", path_, ": cannot open"));
  size_t skipped = 0;
  std::string line;
  std::unique_ptr<google::protobuf::Message> m(prototype.New());
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    m->Clear();
    google::protobuf::util::JsonParseOptions opts;
    opts.ignore_unknown_fields = true;  // a newer agent's fields, after a downgrade
    if (!google::protobuf::util::JsonStringToMessage(line, m.get(), opts).ok()) {
      ++skipped;
      continue;
    }
    each(*m);
  }
  return skipped;
}

absl::Status RecordFile::Append(const google::protobuf::Message& record) {
  auto line = Line(record);
  if (!line.ok()) return line.status();
  if (auto s = WriteAll(fd_, *line, path_); !s.ok()) return s;
  if (fdatasync(fd_) != 0) return Errno(absl::StrCat("fdatasync ", path_));
  return absl::OkStatus();
}

absl::Status RecordFile::Rewrite(const std::vector<const google::protobuf::Message*>& records) {
  std::string data;
  for (const auto* r : records) {
    auto line = Line(*r);
    if (!line.ok()) return line.status();
    data += *line;
  }
  const std::string tmp = path_ + ".new";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno(absl::StrCat("open ", tmp));
  absl::Status s = WriteAll(fd, data, tmp);
  if (s.ok() && fsync(fd) != 0) s = Errno(absl::StrCat("fsync ", tmp));
  close(fd);
  if (s.ok() && rename(tmp.c_str(), path_.c_str()) != 0) s = Errno(absl::StrCat("rename ", tmp));
  if (!s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  if (int dir = open(DirOf(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir >= 0) {
    fsync(dir);
    close(dir);
  }
  // Appends go to the new file from now on.
  int fresh = open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fresh < 0) return Errno(absl::StrCat("reopen ", path_));
  close(fd_);
  fd_ = fresh;
  return absl::OkStatus();
}

}  // namespace hvagent::service
