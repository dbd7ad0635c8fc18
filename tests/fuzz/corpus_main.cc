// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/*): valid
// frames of every type, bursts of them, client requests of every kind.
// The TOML seeds are hand-written files in corpus/config.
//
//   build/tests/fuzz/baton-fuzz-corpus tests/fuzz/corpus

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ipc/messages.h"
#include "protocol/wire.h"

namespace {

using namespace baton::wire;

void write(const std::filesystem::path& p, const void* data, size_t n) {
  std::ofstream(p, std::ios::binary).write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

std::vector<std::vector<std::byte>> frames() {
  std::vector<std::vector<std::byte>> out;
  static const std::vector<std::byte> payload(2048, std::byte{0x42});
  auto add = [&](Frame f) {
    f.src = 2;
    f.dst = 1;
    const bool nameless = f.type == MsgType::kNote || f.type == MsgType::kRecords;  // and no segment id
    if (f.name.empty() && f.type != MsgType::kAck && f.type != MsgType::kHeartbeat && f.type != MsgType::kError &&
        !nameless)
      f.name = "s1";
    f.seg_id = nameless ? 0 : segment_id(f.name);
    std::vector<std::byte> b(kMaxFrameSize);
    b.resize(encode(f, b));
    out.push_back(b);
  };
  Frame d;
  d.type = MsgType::kData;
  d.name = "s1";
  d.epoch = 1;
  d.generation = 1;
  d.total_len = 4096;
  d.chunk_size = 2048;
  d.chunk_count = 2;
  d.payload = payload;
  add(d);
  d.chunk_index = 1;
  d.flags = kFlagGenCrc;
  add(d);
  d.type = MsgType::kFetchData;
  add(d);
  Frame a;
  a.type = MsgType::kAck;
  a.generation = 1;
  a.chunk_index = 2;
  a.chunk_count = 2;
  a.flags = kFlagComplete;
  // Replies carry their sender's incarnation (low 32 bits): node 2 of the
  // fuzz target starts at its simulated clock's first tick, 1 s.
  constexpr uint32_t kNode2Incarnation = 1'000'000'000;
  a.gen_crc = kNode2Incarnation;
  add(a);
  Frame q;
  q.type = MsgType::kFetchRequest;
  q.flags = kFlagQuery;
  add(q);
  Frame m;
  m.type = MsgType::kFetchMeta;
  m.flags = kFlagFound | kFlagRecord;
  m.epoch = 1;
  m.generation = 3;
  m.total_len = 4096;
  set_aux_epoch(m, 1);
  add(m);
  // Direct reads: a request for a lent slot, a slot lent, the loader done.
  Frame qd;
  qd.type = MsgType::kFetchRequest;
  qd.flags = kFlagDirect;
  add(qd);
  Frame lent;
  lent.type = MsgType::kFetchMeta;
  lent.flags = kFlagDirect | kFlagFound | kFlagGenCrc;
  lent.epoch = 1;
  lent.generation = 3;
  lent.total_len = 4096;
  lent.chunk_size = 4096;
  set_direct(lent, 1, 3, 12345);
  add(lent);
  Frame done;
  done.type = MsgType::kAck;
  done.flags = kFlagDirect | kFlagFetch | kFlagComplete;
  done.generation = 3;
  add(done);
  Frame h;
  h.type = MsgType::kHeartbeat;
  h.epoch = 12345;
  h.flags = kFlagQuorate;
  add(h);
  Frame c;
  c.type = MsgType::kClaim;
  c.epoch = 2;
  add(c);
  Frame r;
  r.type = MsgType::kSetRecord;
  r.epoch = 1;
  r.generation = 1;
  r.sack = 0x0002000100000000ull;
  add(r);
  Frame tomb = r;  // a delete's tombstone
  tomb.flags = kFlagDeleted;
  tomb.sack = 0;
  tomb.epoch = 3;
  add(tomb);
  Frame echo = r;  // a node stored the owner's set record
  echo.flags = kFlagComplete;
  echo.gen_crc = kNode2Incarnation;
  add(echo);
  Frame rel = r;  // a recorded set: non-members drop their copies
  rel.flags = kFlagRelease;
  add(rel);
  Frame e;
  e.type = MsgType::kError;
  e.code = 1;
  add(e);
  Frame note;  // a daemon's note (the failover manager's)
  note.type = MsgType::kNote;
  static const std::string text = R"({"t":"s","n":2,"g":[]})";
  note.payload = std::as_bytes(std::span(text));
  add(note);
  Frame ask;  // a node that started asks for the records
  ask.type = MsgType::kRecords;
  ask.flags = kFlagQuery;
  ask.epoch = 777;
  add(ask);
  static std::vector<std::byte> entries(kMaxNote);
  size_t len = put_record_entry(entries, 0, RecordEntry{"s1", 1, 1, 0x0002000100000000ull, 2, false});
  len = put_record_entry(entries, len, RecordEntry{"s2", 3, 1, 0, 2, true});
  Frame handed = ask;  // and is handed them
  handed.flags = kFlagComplete;
  handed.payload = std::span(entries).first(len);
  add(handed);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: baton-fuzz-corpus DIR\n");
    return 64;
  }
  const std::filesystem::path dir = argv[1];
  for (const char* t : {"wire", "engine_frames", "ipc"}) std::filesystem::create_directories(dir / t);
  const auto fs = frames();
  std::vector<std::byte> burst;
  for (size_t i = 0; i < fs.size(); ++i) {
    auto w = fs[i];
    if (w.size() % 2 == 0) w.push_back(std::byte{0});  // odd: the target mends it
    write(dir / "wire" / ("frame" + std::to_string(i)), w.data(), w.size());
    write(dir / "wire" / ("exact" + std::to_string(i)), fs[i].data(), fs[i].size());
    const uint16_t len = static_cast<uint16_t>(fs[i].size());
    std::vector<std::byte> one(2 + fs[i].size());
    std::memcpy(one.data(), &len, 2);
    std::memcpy(one.data() + 2, fs[i].data(), fs[i].size());
    write(dir / "engine_frames" / ("frame" + std::to_string(i)), one.data(), one.size());
    burst.insert(burst.end(), one.begin(), one.end());
  }
  write(dir / "engine_frames" / "burst", burst.data(), burst.size());
  using baton::ipc::Op;
  int n = 0;
  for (Op op : {Op::kOpen, Op::kCreate, Op::kLoad, Op::kWait, Op::kClose, Op::kStatus, Op::kEvents, Op::kDelete,
                Op::kGroups, Op::kMetric, Op::kTakeOver, Op::kLoadFor}) {
    baton::ipc::Request r{};
    r.magic = baton::ipc::kMagic;
    r.version = baton::ipc::kVersion;
    r.op = static_cast<uint16_t>(op);
    r.size = 4096;
    r.handle = 1;
    r.k = 1;
    r.timeout_ms = 1;
    r.name_len = 2;
    std::memcpy(r.name, "n1", 2);
    write(dir / "ipc" / ("request" + std::to_string(n++)), &r, sizeof r);
  }
  return 0;
}
