// Package keyfile reads and writes PBN key files.
//
// A key file holds the keys of one user on one device, or, as a
// provisioning key file, of no user: the secret that opens the device's
// LUKS2 keyslot, the keys of the user's groups and the enterprise key
// ([Keyring]). The keyring is encrypted under a random data key, and the
// data key is wrapped by one or more protectors, any of which opens the
// file. A protector holds one or more factors ([Factor]): a password, a
// recovery key, a TPM, a key server. The key that wraps the data key is
// derived from the secrets of all of a protector's factors together, so a
// protector with a TPM and a password opens only with both.
//
// # Format
//
// All integers are big-endian. A file is at most 1 MiB:
//
//	magic       8 bytes  "\x89PBNKF\r\n"
//	version     2 bytes  1
//	header      4-byte length, then fields
//	protectors  1-byte count (1 to 32), then each: 4-byte length, fields
//	keyring     4-byte length, then a 24-byte nonce and the ciphertext
//	checksum    32 bytes, SHA-256 of everything before it
//
// A section's fields are a 1-byte tag, a 2-byte length and the value, in
// ascending tag order, each tag once unless the format says it repeats.
// The header holds (tag: field) 1: key file ID, 2: kind, 3: device ID, 4:
// UPN, 5: SID, 6: generation, 7: creation time (Unix seconds), 8: key
// server URL, 9: key server public key (DER SubjectPublicKeyInfo), 10:
// offline limit (seconds). A protector holds 1: label, 2: a 32-byte salt, 3:
// a factor (repeated, up to 4: one byte of factor type, then its
// parameters), 4: the wrapped data key (nonce and ciphertext). The
// decrypted keyring holds 1: FDE secret, 2: a group key (repeated; itself
// fields 1: SID, 2: name, 3: key), 3: enterprise key.
//
// The keyring is sealed with XChaCha20-Poly1305 under the data key, with
// every byte of the file before the nonce as associated data, so once a
// protector opens the file the whole file is authenticated. A protector's
// wrapping key is HKDF-SHA256 over its factors' secrets (each prefixed by
// its type and length), salted with the protector's salt; the data key is
// sealed with XChaCha20-Poly1305 under it, with the key file ID and the
// protector's other fields as associated data.
//
// The checksum is not a security measure: it tells a damaged file
// ([ErrDamaged]) from a wrong password before any key is derived.
//
// Each version's parsing lives in its own file (v1.go), so that a file
// written today stays readable by every later release.
//
// # Factors
//
// A password factor ([Password]) stores its Argon2id parameters and salt
// and derives its secret from the password; the parameters are calibrated
// on the enrolling device, never below [FloorArgon2]. A recovery key factor
// ([Recovery]) derives its secret from a 128-bit [RecoveryKey], written as
// 48 digits with a check in every group. The TPM and network factors live in
// packages of their own and plug in through the [Factor] interface.
//
// # Storage
//
// [Load], [Replace] and [Remove] keep key files on the ESP safe from power
// cuts, through an [FS] (the real one is [OSFS]).
package keyfile
