#pragma once
// Job-secret authentication of a freshly opened connection: mutual
// HMAC-SHA256 challenge-response with fresh random nonces (OpenSSL).
//
//   client -> server  "BRAUTH01" mode nonce_c[32]
//   server -> client  "BRAUTH01" mode status nonce_s[32] mac_s[32]
//                     mac_s = HMAC(secret, "braid/server" | nonce_c | nonce_s)
//   client -> server  mac_c[32]
//                     mac_c = HMAC(secret, "braid/client" | nonce_s | nonce_c)
//   server -> client  verdict (0 accepted)
//
// Each side proves knowledge of the secret without sending it; distinct
// labels stop a reflection of one side's answer, fresh nonces stop replays.
// mode 0 means "no secret" (loopback-only jobs): both ends must agree on the
// mode, so a peer with a secret never talks to one without. A refused peer is
// never sent any data; the server logs the refusal with the peer's address.
//
// The helpers work on blocking and non-blocking sockets and honour the
// deadline; the rendezvous store (tcp_store.cpp) uses them for its clients.
#include <string>

#include "core/clock.hpp"

namespace braid::net {

// The job secret: `configured` if non-empty, else BRAID_JOB_SECRET, else the
// contents of the file named by BRAID_JOB_SECRET_FILE (trailing newline
// removed), else "". Throws ConfigError for an unreadable or empty file.
std::string load_job_secret(const std::string& configured = {});

// Client side of the handshake. Throws braid::AuthError if the server refuses
// us or cannot prove it knows the secret, NetError/Timeout on I/O failure.
// `peer` names the server in messages (e.g. "rank 0 at 10.0.0.1:4000").
void auth_client(int fd, const std::string& secret, const Deadline& deadline, const std::string& peer = {});

// Server side. Throws braid::AuthError (after logging a warning that names the
// peer) if the client does not know the secret.
void auth_server(int fd, const std::string& secret, const Deadline& deadline, const std::string& peer = {});

}  // namespace braid::net
