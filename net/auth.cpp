#include "net/auth.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <array>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "net/socket.hpp"

namespace braid::net {

namespace {

constexpr char kMagic[8] = {'B', 'R', 'A', 'U', 'T', 'H', '0', '1'};
constexpr size_t kNonce = 32;
constexpr size_t kMac = 32;
enum : uint8_t { kModeNone = 0, kModeHmac = 1 };
enum : uint8_t { kStatusOk = 0, kStatusModeMismatch = 1 };
enum : uint8_t { kVerdictAccepted = 0, kVerdictRefused = 2 };

using Nonce = std::array<uint8_t, kNonce>;
using Mac = std::array<uint8_t, kMac>;

Nonce fresh_nonce() {
  Nonce n;
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1)
    throw NetError("OpenSSL could not produce random bytes for the authentication nonce");
  return n;
}

Mac hmac(const std::string& secret, const char* label, const Nonce& a, const Nonce& b) {
  std::string msg(label);
  msg.append(reinterpret_cast<const char*>(a.data()), a.size());
  msg.append(reinterpret_cast<const char*>(b.data()), b.size());
  Mac out{};
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out.data(), &len) ||
      len != kMac)
    throw NetError("OpenSSL HMAC-SHA256 failed");
  return out;
}

std::string name_of(int fd, const std::string& peer) {
  return peer.empty() ? "peer at " + peer_address(fd) : peer;
}

}  // namespace

std::string load_job_secret(const std::string& configured) {
  if (!configured.empty()) return configured;
  if (auto s = env::get("BRAID_JOB_SECRET"); s && !s->empty()) return *s;
  auto file = env::get("BRAID_JOB_SECRET_FILE");
  if (!file || file->empty()) return {};
  std::ifstream in(*file);
  if (!in)
    throw ConfigError(fmt::format("cannot read the job secret file '{}' (BRAID_JOB_SECRET_FILE)", *file),
                      "check the path and its permissions");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  if (s.empty())
    throw ConfigError(fmt::format("the job secret file '{}' is empty", *file),
                      "write a long random string into it, e.g. `openssl rand -hex 32 > FILE`");
  struct stat st{};
  if (stat(file->c_str(), &st) == 0 && (st.st_mode & 0077))
    log::warn("the job secret file '{}' is readable by other users; chmod 600 it", *file);
  return s;
}

void auth_client(int fd, const std::string& secret, const Deadline& deadline, const std::string& peer) {
  const std::string who = name_of(fd, peer);
  const uint8_t mode = secret.empty() ? kModeNone : kModeHmac;
  Nonce nc = fresh_nonce();
  uint8_t hello[sizeof kMagic + 1 + kNonce];
  std::memcpy(hello, kMagic, sizeof kMagic);
  hello[sizeof kMagic] = mode;
  std::memcpy(hello + sizeof kMagic + 1, nc.data(), kNonce);
  send_all(fd, hello, sizeof hello, deadline, who);

  uint8_t reply[sizeof kMagic + 2 + kNonce + kMac];
  recv_exact(fd, reply, sizeof reply, deadline, who);
  if (std::memcmp(reply, kMagic, sizeof kMagic) != 0)
    throw AuthError(fmt::format("{} does not speak the braid handshake", who),
                    "check the address: it must be a braid rank or rendezvous store of this job");
  uint8_t server_mode = reply[sizeof kMagic];
  uint8_t status = reply[sizeof kMagic + 1];
  if (status == kStatusModeMismatch || server_mode != mode) {
    if (mode == kModeNone)
      throw AuthError(fmt::format("{} requires a job secret and this process has none", who),
                      "set BRAID_JOB_SECRET (or BRAID_JOB_SECRET_FILE) to the job's secret on every rank");
    throw AuthError(fmt::format("{} runs without a job secret but this process has one", who),
                    "give every rank of the job the same BRAID_JOB_SECRET");
  }
  if (status != kStatusOk) throw AuthError(fmt::format("{} sent an unknown handshake status {}", who, status));
  if (mode == kModeNone) {
    uint8_t verdict;
    recv_exact(fd, &verdict, 1, deadline, who);
    if (verdict != kVerdictAccepted) throw AuthError(fmt::format("{} refused the connection", who));
    return;
  }
  Nonce ns;
  Mac mac_s;
  std::memcpy(ns.data(), reply + sizeof kMagic + 2, kNonce);
  std::memcpy(mac_s.data(), reply + sizeof kMagic + 2 + kNonce, kMac);
  Mac expect = hmac(secret, "braid/server", nc, ns);
  const bool server_ok = CRYPTO_memcmp(expect.data(), mac_s.data(), kMac) == 0;
  // Answer even when the server's proof is wrong, so that the server can tell
  // (and log) that the two sides hold different secrets. A proof bound to the
  // server's nonce is of no use to anyone else.
  Mac mac_c = hmac(secret, "braid/client", ns, nc);
  send_all(fd, mac_c.data(), kMac, deadline, who);
  uint8_t verdict = kVerdictRefused;
  try {
    recv_exact(fd, &verdict, 1, deadline, who);
  } catch (const Timeout&) {
    if (server_ok) throw;
  } catch (const NetError&) {
    verdict = kVerdictRefused;
  }
  if (!server_ok)
    throw AuthError(fmt::format("{} does not know the job secret (its HMAC proof is wrong)", who),
                    "every rank of a job needs the same BRAID_JOB_SECRET; or the address belongs to "
                    "another job");
  if (verdict != kVerdictAccepted)
    throw AuthError(fmt::format("{} refused our job secret", who),
                    "every rank of a job needs the same BRAID_JOB_SECRET");
}

void auth_server(int fd, const std::string& secret, const Deadline& deadline, const std::string& peer) {
  const std::string who = name_of(fd, peer);
  const uint8_t mode = secret.empty() ? kModeNone : kModeHmac;
  uint8_t hello[sizeof kMagic + 1 + kNonce];
  recv_exact(fd, hello, sizeof hello, deadline, who);
  if (std::memcmp(hello, kMagic, sizeof kMagic) != 0) {
    log::warn("refused a connection from {}: it does not speak the braid handshake", who);
    throw AuthError(fmt::format("refused a connection from {}: not a braid peer", who));
  }
  uint8_t client_mode = hello[sizeof kMagic];
  Nonce nc;
  std::memcpy(nc.data(), hello + sizeof kMagic + 1, kNonce);

  uint8_t reply[sizeof kMagic + 2 + kNonce + kMac] = {};
  std::memcpy(reply, kMagic, sizeof kMagic);
  reply[sizeof kMagic] = mode;
  if (client_mode != mode) {
    reply[sizeof kMagic + 1] = kStatusModeMismatch;
    try {
      send_all(fd, reply, sizeof reply, deadline, who);
    } catch (const Error&) {
    }
    const char* why = mode == kModeHmac ? "it has no job secret" : "it has a job secret and this rank has none";
    log::warn("refused a connection from {}: {}", who, why);
    throw AuthError(fmt::format("refused a connection from {}: {}", who, why),
                    "give every rank of the job the same BRAID_JOB_SECRET");
  }
  if (mode == kModeNone) {
    send_all(fd, reply, sizeof reply, deadline, who);
    uint8_t verdict = kVerdictAccepted;
    send_all(fd, &verdict, 1, deadline, who);
    return;
  }
  Nonce ns = fresh_nonce();
  Mac mac_s = hmac(secret, "braid/server", nc, ns);
  std::memcpy(reply + sizeof kMagic + 2, ns.data(), kNonce);
  std::memcpy(reply + sizeof kMagic + 2 + kNonce, mac_s.data(), kMac);
  send_all(fd, reply, sizeof reply, deadline, who);
  Mac mac_c;
  try {
    recv_exact(fd, mac_c.data(), kMac, deadline, who);
  } catch (const NetError& e) {
    // A client that finds our proof wrong hangs up here.
    log::warn("refused a connection from {}: it hung up during authentication ({})", who, e.what());
    throw AuthError(fmt::format("{} hung up during authentication (it may not know the job secret)", who));
  }
  Mac expect = hmac(secret, "braid/client", ns, nc);
  if (CRYPTO_memcmp(expect.data(), mac_c.data(), kMac) != 0) {
    uint8_t verdict = kVerdictRefused;
    try {
      send_all(fd, &verdict, 1, deadline, who);
    } catch (const Error&) {
    }
    log::warn("refused a connection from {}: wrong job secret", who);
    throw AuthError(fmt::format("refused a connection from {}: it does not know the job secret", who),
                    "every rank of a job needs the same BRAID_JOB_SECRET");
  }
  uint8_t verdict = kVerdictAccepted;
  send_all(fd, &verdict, 1, deadline, who);
}

}  // namespace braid::net
