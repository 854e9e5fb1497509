#include "bench/loadgen/report.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <numeric>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hvagent::bench {

void Latencies::Merge(const Latencies& other) {
  us_.insert(us_.end(), other.us_.begin(), other.us_.end());
  sorted_ = false;
}

double Latencies::Quantile(double q) {
  if (us_.empty()) return 0;
  if (!sorted_) {
    std::sort(us_.begin(), us_.end());
    sorted_ = true;
  }
  // Nearest rank: the smallest sample with at least q of the samples at or below it.
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(us_.size())));
  return us_[std::clamp<size_t>(rank, 1, us_.size()) - 1];
}

double Latencies::Mean() const {
  if (us_.empty()) return 0;
  return std::accumulate(us_.begin(), us_.end(), 0.0) / static_cast<double>(us_.size());
}

void Report::Section(std::string key, std::string title, std::vector<std::string> columns) {
  sections_.push_back({std::move(key), std::move(title), std::move(columns), {}, {}});
}

void Report::Row(std::vector<Cell> cells) {
  if (!sections_.empty()) sections_.back().rows.push_back(std::move(cells));
}

void Report::Note(std::string text) {
  if (!sections_.empty()) sections_.back().notes.push_back(std::move(text));
}

void Report::Fact(std::string key, std::string value) { facts_.emplace_back(std::move(key), std::move(value)); }

namespace {

std::string Text(const Cell& c) {
  if (const auto* s = std::get_if<std::string>(&c.value)) return s->empty() ? "-" : *s;
  return absl::StrFormat("%.*f", c.decimals, std::get<double>(c.value));
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string JsonValue(const Cell& c) {
  if (const auto* s = std::get_if<std::string>(&c.value)) return JsonString(*s);
  double v = std::get<double>(c.value);
  if (!std::isfinite(v)) return "null";
  return absl::StrFormat("%.*f", std::max(c.decimals, 3), v);
}

}  // namespace

void Report::Print(std::ostream& out) const {
  for (const auto& [k, v] : facts_) out << k << ": " << v << "\n";
  for (const Sec& s : sections_) {
    out << "\n== " << s.title << " ==\n";
    std::vector<size_t> width(s.columns.size());
    for (size_t i = 0; i < s.columns.size(); ++i) width[i] = s.columns[i].size();
    for (const auto& r : s.rows) {
      for (size_t i = 0; i < r.size() && i < width.size(); ++i) width[i] = std::max(width[i], Text(r[i]).size());
    }
    auto line = [&](const std::vector<std::string>& cells) {
      out << "|";
      for (size_t i = 0; i < width.size(); ++i) {
        const std::string cell = i < cells.size() ? cells[i] : "";
        // Text left, numbers right: the columns of figures line up.
        bool left = i == 0;
        out << " " << (left ? std::left : std::right) << std::setw(static_cast<int>(width[i])) << cell << " |";
      }
      out << "\n";
    };
    line(s.columns);
    out << "|";
    for (size_t w : width) out << std::string(w + 2, '-') << "|";
    out << "\n";
    for (const auto& r : s.rows) {
      std::vector<std::string> cells;
      for (const Cell& c : r) cells.push_back(Text(c));
      line(cells);
    }
    for (const std::string& n : s.notes) out << "  " << n << "\n";
  }
}

std::string Report::Json() const {
  std::string j = "{\n  \"facts\": {";
  for (size_t i = 0; i < facts_.size(); ++i) {
    absl::StrAppend(&j, i ? ", " : "", JsonString(facts_[i].first), ": ", JsonString(facts_[i].second));
  }
  j += "},\n  \"scenarios\": [";
  for (size_t si = 0; si < sections_.size(); ++si) {
    const Sec& s = sections_[si];
    absl::StrAppend(&j, si ? "," : "", "\n    {\"key\": ", JsonString(s.key), ", \"title\": ", JsonString(s.title),
                    ",\n     \"rows\": [");
    for (size_t ri = 0; ri < s.rows.size(); ++ri) {
      absl::StrAppend(&j, ri ? "," : "", "\n       {");
      for (size_t ci = 0; ci < s.rows[ri].size() && ci < s.columns.size(); ++ci) {
        absl::StrAppend(&j, ci ? ", " : "", JsonString(s.columns[ci]), ": ", JsonValue(s.rows[ri][ci]));
      }
      j += "}";
    }
    j += "],\n     \"notes\": [";
    for (size_t ni = 0; ni < s.notes.size(); ++ni) absl::StrAppend(&j, ni ? ", " : "", JsonString(s.notes[ni]));
    j += "]}";
  }
  j += "\n  ]\n}\n";
  return j;
}

}  // namespace hvagent::bench
