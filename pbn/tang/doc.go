// Package tang implements the McCallum-Relyea exchange of Tang, both sides:
// the server's keys, advertisement and HTTP handler, the client that binds
// to and recovers from a Tang server, and the key file's network factor.
//
// # The exchange
//
// The server holds an exchange key s with public S = sG. To bind, the client
// makes a key pair c, C = cG, keeps K = cS as its secret and stores C; c is
// forgotten. To recover, the client makes an ephemeral e, sends X = C + eG,
// and the server answers Y = sX, one scalar multiplication. The client
// computes K = Y - eS. The server never sees K, and X is uniformly random to
// it, so it learns nothing about C either.
//
// # The wire
//
// The protocol is Tang's (github.com/latchset/tang, README "Protocol"):
//
//   - GET /adv returns a JWS (RFC 7515) whose payload is a JWK set
//     (RFC 7517 section 5) of the advertised public keys, signed by every
//     advertised signing key (ES512, RFC 7518 section 3.4).
//   - GET /adv/{kid} returns the same payload, signed in addition by the
//     signing key whose thumbprint is kid, advertised or not, so that a
//     client that pinned a key that has since been rotated out can check
//     the new advertisement.
//   - POST /rec/{kid} takes the client's X as a JWK (RFC 7518 section 6.2)
//     and returns sX as a JWK, for the exchange key ("alg": "ECMR",
//     "key_ops": ["deriveKey"]) whose thumbprint is kid.
//
// Key IDs are JWK thumbprints (RFC 7638) in base64url; like tangd, the
// server answers to a thumbprint made with any of SHA-1, SHA-224, SHA-256,
// SHA-384 or SHA-512, and names key files by the SHA-256 one.
//
// # Keys on disk
//
// A key directory holds one JWK file a key, named THUMBPRINT.jwk, as tangd
// keeps them. Rotation ([RotateKeys]) writes new keys and renames the old
// ones to .THUMBPRINT.jwk: hidden keys are no longer advertised but still
// answer /rec, so existing bindings keep working until the administrator
// retires them ([RetireKeys]). A directory made by tangd-keygen loads as it
// is.
package tang
