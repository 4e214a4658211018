package disk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/secret"
)

// TokenType is the type of the LUKS2 tokens that record which key file a
// keyslot belongs to (LUKS2 On-Disk Format Specification, section 3.4: a
// token of a type of the application's own, with the keyslots it refers
// to and fields of its own).
const TokenType = "pbn-keyfile"

// slotIterations is the PBKDF2 iteration count of the keyslots that Add
// makes. A key file's FDE secret is 64 random bytes: stretching it adds
// nothing against guessing, and cheap keyslots keep the boot and the
// secure moment within their budgets.
const slotIterations = 1000

// Keyslots manages the keyslots of the LUKS2 volume at Dev with cryptsetup,
// whose path is Cryptsetup. It works on a block device or on an image file,
// without device-mapper. Every key reaches cryptsetup through a pipe of its
// own, never a command line or a file.
//
// Add, Find and Kill return ErrWrongKey when no keyslot opens with the key
// given.
type Keyslots struct {
	Cryptsetup string
	Dev        string
}

// slotLine is cryptsetup's verbose report of the keyslot it used.
var slotLine = regexp.MustCompile(`(?m)^Key slot ([0-9]+) (?:unlocked|created)\.$`)

// Add adds a keyslot for key, authorized by existing, the key of another
// keyslot, and returns its number.
func (k Keyslots) Add(ctx context.Context, existing, key secret.Bytes) (int, error) {
	old, err := keyPipe(existing)
	if err != nil {
		return 0, fmt.Errorf("add keyslot to %s: %w", k.Dev, err)
	}
	defer old.Close()
	nw, err := keyPipe(key)
	if err != nil {
		return 0, fmt.Errorf("add keyslot to %s: %w", k.Dev, err)
	}
	defer nw.Close()
	out, err := k.run(ctx, nil, []*os.File{old, nw}, "luksAddKey", "--verbose",
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", strconv.Itoa(slotIterations),
		"--key-file=/dev/fd/3", k.Dev, "/dev/fd/4")
	if err != nil {
		return 0, fmt.Errorf("add keyslot to %s: %w", k.Dev, err)
	}
	return reportedSlot(out)
}

// Find returns the number of the keyslot that key opens.
//
// TODO: cryptsetup tries every keyslot in turn, so a volume formatted with
// cryptsetup's default Argon2id keyslot costs its full derivation (a
// second or more, and up to 1 GiB of memory) on each Find that misses it;
// imaging should give the provisioning key file's random secret a PBKDF2
// keyslot as Add does, or tag it so that Find can try only the slots
// that matter.
func (k Keyslots) Find(ctx context.Context, key secret.Bytes) (int, error) {
	in, err := keyPipe(key)
	if err != nil {
		return 0, fmt.Errorf("test key on %s: %w", k.Dev, err)
	}
	defer in.Close()
	out, err := k.run(ctx, in, nil, "open", "--type", "luks2", "--test-passphrase", "--verbose",
		"--key-file=-", k.Dev)
	if err != nil {
		return 0, fmt.Errorf("test key on %s: %w", k.Dev, err)
	}
	return reportedSlot(out)
}

// Kill wipes keyslot slot. The key file whose slot it was no longer opens
// the volume, and neither does any copy of it. A token that tagged the
// slot stays, without keyslots; Tags leaves it out.
func (k Keyslots) Kill(ctx context.Context, slot int) error {
	if _, err := k.run(ctx, nil, nil, "luksKillSlot", k.Dev, strconv.Itoa(slot)); err != nil {
		return fmt.Errorf("kill keyslot %d of %s: %w", slot, k.Dev, err)
	}
	return nil
}

// Tag records in a token of TokenType that keyslot slot belongs to key
// file id.
func (k Keyslots) Tag(ctx context.Context, slot int, id keyfile.ID) error {
	b, err := json.Marshal(tokenV1{Type: TokenType, Keyslots: []string{strconv.Itoa(slot)},
		KeyFile: id.String()})
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = w.Write(b) // a few dozen bytes: the pipe's buffer holds them
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		_, err = k.run(ctx, r, nil, "token", "import", "--json-file=-", k.Dev)
	}
	if err != nil {
		return fmt.Errorf("tag keyslot %d of %s: %w", slot, k.Dev, err)
	}
	return nil
}

// Tags returns the key file that each tagged keyslot belongs to.
func (k Keyslots) Tags(ctx context.Context) (map[int]keyfile.ID, error) {
	out, err := k.run(ctx, nil, nil, "luksDump", "--dump-json-metadata", k.Dev)
	if err != nil {
		return nil, fmt.Errorf("read tokens of %s: %w", k.Dev, err)
	}
	tags, err := ParseTags(out)
	if err != nil {
		return nil, fmt.Errorf("read tokens of %s: %w", k.Dev, err)
	}
	return tags, nil
}

// tokenV1 is a token of TokenType.
type tokenV1 struct {
	Type     string   `json:"type"`
	Keyslots []string `json:"keyslots"`
	KeyFile  string   `json:"pbn_key_file"`
}

// ParseTags reads the tokens of TokenType from a LUKS2 header's JSON
// metadata (cryptsetup luksDump --dump-json-metadata) and returns the key
// file that each keyslot belongs to. Tokens of other types, and tokens
// whose keyslot was killed, are left out; a keyslot tagged twice is an
// error.
func ParseTags(metadata []byte) (map[int]keyfile.ID, error) {
	var m struct {
		Tokens map[string]json.RawMessage `json:"tokens"`
	}
	if err := json.Unmarshal(metadata, &m); err != nil {
		return nil, fmt.Errorf("luks2 metadata: %w", err)
	}
	tags := map[int]keyfile.ID{}
	for n, raw := range m.Tokens {
		var t tokenV1
		if err := json.Unmarshal(raw, &t); err != nil {
			return nil, fmt.Errorf("luks2 token %s: %w", n, err)
		}
		if t.Type != TokenType || len(t.Keyslots) == 0 {
			continue
		}
		id, err := keyfile.ParseID(t.KeyFile)
		if err != nil || len(t.Keyslots) != 1 {
			return nil, fmt.Errorf("luks2 token %s: not a valid %s token", n, TokenType)
		}
		slot, err := strconv.Atoi(t.Keyslots[0])
		if err != nil || slot < 0 {
			return nil, fmt.Errorf("luks2 token %s: keyslot %q", n, t.Keyslots[0])
		}
		if _, dup := tags[slot]; dup {
			return nil, fmt.Errorf("luks2 token %s: keyslot %d tagged twice", n, slot)
		}
		tags[slot] = id
	}
	return tags, nil
}

// reportedSlot returns the keyslot that cryptsetup's verbose output names.
func reportedSlot(out []byte) (int, error) {
	m := slotLine.FindSubmatch(out)
	if m == nil {
		return 0, errors.New("cryptsetup did not say which keyslot it used")
	}
	return strconv.Atoi(string(m[1]))
}

// run runs cryptsetup in batch mode with its messages in English, stdin
// as its standard input and extra as its descriptors 3 and up, and returns
// what it printed. Exit code 2 (no key available with this passphrase)
// becomes ErrWrongKey.
func (k Keyslots) run(ctx context.Context, stdin *os.File, extra []*os.File, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, k.Cryptsetup, append([]string{"--batch-mode"}, args...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if stdin != nil {
		cmd.Stdin = stdin
	}
	cmd.ExtraFiles = extra
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return nil, ErrWrongKey
	}
	if err != nil {
		return nil, fmt.Errorf("cryptsetup %s: %w: %s", args[0], err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}
