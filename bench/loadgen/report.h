#pragma once
// Report: the figures of one benchmark run, one section per scenario, printed as plain tables
// and written as JSON. Latencies are collected as raw samples and summarised here, so every
// scenario computes p50 / p99 the same way.

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <variant>
#include <vector>

namespace hvagent::bench {

// Sorted-once latency samples in microseconds.
class Latencies {
 public:
  void Add(std::chrono::steady_clock::duration d) {
    us_.push_back(std::chrono::duration<double, std::micro>(d).count());
    sorted_ = false;
  }
  void AddMicros(double us) {
    us_.push_back(us);
    sorted_ = false;
  }
  void Merge(const Latencies& other);
  size_t count() const { return us_.size(); }
  // q in [0, 1]; 0 when empty.
  double Quantile(double q);
  double p50() { return Quantile(0.5); }
  double p99() { return Quantile(0.99); }
  double Mean() const;

 private:
  std::vector<double> us_;
  bool sorted_ = true;
};

// A cell: a number (printed with `decimals`) or text. Empty text prints as "-".
struct Cell {
  std::variant<double, std::string> value;
  int decimals = 1;
  Cell(double v, int d = 1) : value(v), decimals(d) {}
  Cell(int v) : value(static_cast<double>(v)), decimals(0) {}
  Cell(int64_t v) : value(static_cast<double>(v)), decimals(0) {}
  Cell(uint64_t v) : value(static_cast<double>(v)), decimals(0) {}
  Cell(std::string v) : value(std::move(v)) {}
  Cell(const char* v) : value(std::string(v)) {}
};

class Report {
 public:
  // Starts a section; the rows that follow belong to it.
  void Section(std::string key, std::string title, std::vector<std::string> columns);
  void Row(std::vector<Cell> cells);
  // A line printed under the section's table (what was measured, why something was skipped).
  void Note(std::string text);
  // Whole-run facts (machine, mode, binaries).
  void Fact(std::string key, std::string value);

  void Print(std::ostream& out) const;
  std::string Json() const;

 private:
  struct Sec {
    std::string key, title;
    std::vector<std::string> columns;
    std::vector<std::vector<Cell>> rows;
    std::vector<std::string> notes;
  };
  std::vector<std::pair<std::string, std::string>> facts_;
  std::vector<Sec> sections_;
};

}  // namespace hvagent::bench
