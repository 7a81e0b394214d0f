#include "descriptor.h"

#include <sys/time.h>

#include <cstdio>
#include <ctime>

#include "json.h"

namespace mc {

namespace {

Status corrupt(const std::string& why) { return Status(Code::MALFORMED_JSON, "corrupted segment descriptor: " + why); }

bool readU32(const json::Value* v, uint32_t* out) {
  uint64_t x;
  if (!v || !v->getU64(&x) || x > 0xFFFFFFFFULL) return false;
  *out = static_cast<uint32_t>(x);
  return true;
}

}  // namespace

std::string currentDateTime() {
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  struct tm tmv;
  localtime_r(&tv.tv_sec, &tmv);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d.%06ld", tmv.tm_year + 1900, tmv.tm_mon + 1,
                tmv.tm_mday, tmv.tm_hour, tmv.tm_min, tmv.tm_sec, static_cast<long>(tv.tv_usec));
  return buf;
}

Status decodeSegmentDesc(std::string_view text, SegmentDesc* out) {
  json::Value root;
  json::ParseError perr;
  if (!json::parse(text, &root, &perr)) return Status(Code::MALFORMED_JSON, "segment descriptor: " + perr.message);
  if (!root.isObject()) return corrupt("not an object");
  SegmentDesc d;
  const json::Value* name = root.get("name");
  if (!name || !name->isString() || name->str().empty()) return corrupt("missing name");
  d.name = name->str();

  const json::Value* proto = root.get("protocol");
  if (proto && proto->isString()) {
    d.protocol = proto->str();
  } else if (proto && proto->isArray()) {  // multi-protocol builds publish an array
    d.protocol.clear();
    for (const auto& p : proto->items()) {
      if (p.isString() && (d.protocol.empty() || p.str() == "tcp")) d.protocol = p.str();
    }
    if (d.protocol.empty()) return corrupt("empty protocol list");
  } else {
    return corrupt("missing protocol");
  }

  if (const json::Value* port = root.get("tcp_data_port")) {
    if (!readU32(port, &d.tcpDataPort) || d.tcpDataPort > 65535) return corrupt("bad tcp_data_port");
  }
  if (const json::Value* host = root.get("tcp_data_host")) {
    if (!host->isString()) return corrupt("tcp_data_host is not a string");
    d.tcpDataHost = host->str();
  }
  if (const json::Value* ver = root.get("tcp_proto_version")) {
    if (!readU32(ver, &d.tcpProtoVersion)) return corrupt("bad tcp_proto_version");
  }
  if (const json::Value* ts = root.get("timestamp"); ts && ts->isString()) d.timestamp = ts->str();

  if (const json::Value* bufs = root.get("buffers")) {
    if (!bufs->isArray()) return corrupt("buffers is not an array");
    for (const auto& b : bufs->items()) {
      if (!b.isObject()) return corrupt("buffer is not an object");
      BufferDesc bd;
      const json::Value* bn = b.get("name");
      if (!bn || !bn->isString() || bn->str().empty()) return corrupt("buffer without name");
      bd.name = bn->str();
      const json::Value* ba = b.get("addr");
      const json::Value* bl = b.get("length");
      if (!ba || !ba->getU64(&bd.addr) || bd.addr == 0) return corrupt("buffer with bad addr");
      if (!bl || !bl->getU64(&bd.length) || bd.length == 0) return corrupt("buffer with bad length");
      if (bd.addr + bd.length < bd.addr) return corrupt("buffer wraps the address space");
      if (const json::Value* sp = b.get("mcnode_shm_path"); sp && sp->isString()) {
        bd.shmPath = sp->str();
        if (const json::Value* so = b.get("mcnode_shm_offset")) so->getU64(&bd.shmOffset);
      }
      d.buffers.push_back(std::move(bd));
    }
  }
  if (const json::Value* sh = root.get("mcnode_shm"); sh && sh->isObject()) {
    if (const json::Value* h = sh->get("host_id"); h && h->isString()) d.sameHost.hostId = h->str();
    if (const json::Value* p = sh->get("pid")) readU32(p, &d.sameHost.pid);
  }
  *out = std::move(d);
  return Status();
}

std::string encodeSegmentDesc(const SegmentDesc& desc) {
  json::Value root = json::Value::object();
  json::Value bufs = json::Value::array();
  for (const auto& b : desc.buffers) {
    json::Value jb = json::Value::object();
    jb.set("name", json::Value::string(b.name));
    jb.set("addr", json::Value::uinteger(b.addr));
    jb.set("length", json::Value::uinteger(b.length));
    if (!b.shmPath.empty()) {
      jb.set("mcnode_shm_path", json::Value::string(b.shmPath));
      jb.set("mcnode_shm_offset", json::Value::uinteger(b.shmOffset));
    }
    bufs.push(std::move(jb));
  }
  root.set("buffers", std::move(bufs));
  root.set("name", json::Value::string(desc.name));
  root.set("protocol", json::Value::string(desc.protocol));
  if (!desc.tcpDataHost.empty()) root.set("tcp_data_host", json::Value::string(desc.tcpDataHost));
  root.set("tcp_data_port", json::Value::uinteger(desc.tcpDataPort));
  root.set("tcp_proto_version", json::Value::uinteger(desc.tcpProtoVersion));
  root.set("timestamp", json::Value::string(desc.timestamp.empty() ? currentDateTime() : desc.timestamp));
  if (!desc.sameHost.hostId.empty()) {
    json::Value sh = json::Value::object();
    sh.set("host_id", json::Value::string(desc.sameHost.hostId));
    sh.set("pid", json::Value::uinteger(desc.sameHost.pid));
    root.set("mcnode_shm", std::move(sh));
  }
  return json::write(root);
}

}  // namespace mc
