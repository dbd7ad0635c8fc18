// Micro-benchmarks of the data-path pieces, each next to memcpy of the same
// bytes (run them in one invocation; compare within it, not across machines).
//
//   build/bench/baton-micro [--benchmark_filter=...]

#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "common/crc32c.h"
#include "protocol/wire.h"
#include "replication/replica_store.h"
#include "segment/local_storage.h"

namespace {

using namespace baton;

std::vector<std::byte> random_bytes(size_t n) {
  std::vector<std::byte> v(n);
  std::mt19937_64 rng(1);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t x = rng();
    std::memcpy(v.data() + i, &x, 8);
  }
  return v;
}

void BM_Memcpy(benchmark::State& st) {
  auto src = random_bytes(st.range(0));
  std::vector<std::byte> dst(src.size());
  for (auto _ : st) {
    std::memcpy(dst.data(), src.data(), src.size());
    benchmark::DoNotOptimize(dst.data());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * st.range(0));
}
BENCHMARK(BM_Memcpy)->Arg(16384)->Arg(64 << 20);

void BM_Crc32c(benchmark::State& st) {
  auto src = random_bytes(st.range(0));
  for (auto _ : st) benchmark::DoNotOptimize(crc32c(src.data(), src.size()));
  st.SetBytesProcessed(int64_t(st.iterations()) * st.range(0));
}
BENCHMARK(BM_Crc32c)->Arg(80)->Arg(16384)->Arg(64 << 20);

void BM_CopyCrc32c(benchmark::State& st) {
  auto src = random_bytes(st.range(0));
  std::vector<std::byte> dst(src.size());
  for (auto _ : st) benchmark::DoNotOptimize(copy_crc32c(dst.data(), src.data(), src.size(), crc32c_init()));
  st.SetBytesProcessed(int64_t(st.iterations()) * st.range(0));
}
BENCHMARK(BM_CopyCrc32c)->Arg(16384)->Arg(64 << 20);

// What a replica does with a 64 MiB generation: 16 KiB chunks, each from a
// frame buffer still in cache (a 512 KiB ring), into a 64 MiB slot.
// Arg 0: memcpy (the baseline); 1: copy_crc32c.
void BM_ChunksIntoSlot(benchmark::State& st) {
  constexpr size_t kSlot = 64 << 20, kChunk = 16384, kRing = 512 << 10;
  auto ring = random_bytes(kRing);
  std::vector<std::byte> slot(kSlot, std::byte{1});
  uint32_t sink = 0;
  for (auto _ : st) {
    for (size_t off = 0; off < kSlot; off += kChunk) {
      const std::byte* from = ring.data() + off % kRing;
      if (st.range(0) == 0) std::memcpy(slot.data() + off, from, kChunk);
      else sink ^= copy_crc32c(slot.data() + off, from, kChunk, crc32c_init());
    }
    benchmark::DoNotOptimize(slot.data());
    benchmark::DoNotOptimize(sink);
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * kSlot);
}
BENCHMARK(BM_ChunksIntoSlot)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// The snapshot a commit takes today: memcpy + CRC per 16 KiB chunk, between
// two memfd mappings as the engine allocates them.
void BM_SnapshotLocalStorage(benchmark::State& st) {
  const uint64_t size = st.range(0);
  auto seg = std::move(*LocalStorage::create("bench-seg", size, -1));
  auto stage = std::move(*LocalStorage::create("bench-stage", size, -1));
  std::memset(seg.data(), 7, size);
  std::vector<uint32_t> crcs(size / 16384 + 1);
  for (auto _ : st) {
    for (uint64_t off = 0, i = 0; off < size; off += 16384, ++i) {
      const size_t len = std::min<uint64_t>(16384, size - off);
      std::memcpy(stage.data() + off, seg.data() + off, len);
      crcs[i] = crc32c(stage.data() + off, len);
    }
    benchmark::DoNotOptimize(crcs.data());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * st.range(0));
  st.SetLabel(seg.huge_pages() ? "huge pages" : "4K pages");
}
BENCHMARK(BM_SnapshotLocalStorage)->Arg(64 << 20)->Unit(benchmark::kMillisecond);

wire::Frame data_frame(std::span<const std::byte> payload) {
  wire::Frame f;
  f.type = wire::MsgType::kData;
  f.name = "bench-segment";
  f.seg_id = wire::segment_id(f.name);
  f.src = 1;
  f.dst = 2;
  f.epoch = 1;
  f.generation = 1;
  f.total_len = payload.size() * 64;
  f.chunk_size = static_cast<uint32_t>(payload.size());
  f.chunk_count = 64;
  f.payload = payload;
  return f;
}

void BM_EncodeHeader(benchmark::State& st) {
  auto payload = random_bytes(16384);
  wire::Frame f = data_frame(payload);
  std::byte head[wire::kHeaderSize + wire::kMaxNameLen];
  const uint32_t state = crc32c_extend(crc32c_init(), payload.data(), payload.size());
  for (auto _ : st) benchmark::DoNotOptimize(wire::encode_header(f, state, 16384, head));
}
BENCHMARK(BM_EncodeHeader);

void BM_Decode16K(benchmark::State& st) {
  auto payload = random_bytes(16384);
  std::vector<std::byte> frame(wire::kMaxFrameSize);
  frame.resize(wire::encode(data_frame(payload), frame));
  wire::Frame out;
  for (auto _ : st) benchmark::DoNotOptimize(wire::decode(frame, out));
  st.SetBytesProcessed(int64_t(st.iterations()) * 16384);
}
BENCHMARK(BM_Decode16K);

// A replica taking a whole 1 MiB generation in 16 KiB chunks: decode +
// store apply (copy into the shadow) + publish.
void BM_StoreApply1M(benchmark::State& st) {
  const uint32_t cs = 16384, chunks = 64;
  auto data = random_bytes(uint64_t{cs} * chunks);
  std::vector<uint32_t> crcs(chunks);
  for (uint32_t i = 0; i < chunks; ++i) crcs[i] = crc32c(data.data() + uint64_t{i} * cs, cs);
  std::vector<std::vector<std::byte>> frames;
  uint64_t gen = 1;
  auto build = [&] {
    frames.clear();
    for (uint32_t i = 0; i < chunks; ++i) {
      wire::Frame f = data_frame({data.data() + uint64_t{i} * cs, cs});
      f.generation = gen;
      f.chunk_index = i;
      f.gen_crc = wire::generation_crc(crcs);
      std::vector<std::byte> b(wire::kMaxFrameSize);
      b.resize(wire::encode(f, b));
      frames.push_back(std::move(b));
    }
  };
  build();
  wire::Frame first;
  wire::decode(frames[0], first);
  auto store = std::move(*ReplicaStore::create(first, 0, -1));
  for (auto _ : st) {
    st.PauseTiming();
    ++gen;
    build();
    st.ResumeTiming();
    for (auto& b : frames) {
      wire::Frame f;
      wire::decode(b, f);
      benchmark::DoNotOptimize(store->accept(f));
    }
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * cs * chunks);
}
BENCHMARK(BM_StoreApply1M)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
