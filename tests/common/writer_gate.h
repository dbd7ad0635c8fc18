#pragma once
// Stops a hammering writer thread between two of its writes, so that a
// test can take a reference copy of the memory and commit, and lets it go
// again. pause() returns only once the writer has answered this very
// request: an answer to the previous pause does not count. (The tests
// used a `pause` flag and a `paused` flag the writer set and cleared; a
// writer not scheduled between a resume and the next pause still showed
// `paused` from the last one, and one burst of its writes could land
// while the test hashed or copied the memory it took for the commit's.)

#include <atomic>
#include <thread>

namespace baton::test {

class WriterGate {
 public:
  /// The test's thread: asks the writer to stop and waits until it has.
  void pause() noexcept {
    state_.store(kAsked);
    while (state_.load() != kStopped) std::this_thread::yield();
  }
  /// The test's thread, after pause(): lets the writer go on.
  void resume() noexcept { state_.store(kRunning); }
  /// The writer's thread, between writes: stops here while asked to, or
  /// until `stop` is set.
  void checkpoint(const std::atomic<bool>* stop = nullptr) noexcept {
    int asked = kAsked;
    if (!state_.compare_exchange_strong(asked, kStopped)) return;
    while (state_.load() == kStopped && (stop == nullptr || !stop->load())) std::this_thread::yield();
  }

 private:
  enum : int { kRunning, kAsked, kStopped };
  std::atomic<int> state_{kRunning};
};

}  // namespace baton::test
