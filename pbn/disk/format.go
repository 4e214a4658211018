package disk

import (
	"context"
	"fmt"
	"strconv"

	"github.com/pbn-project/pbn/pbn/secret"
)

// FormatLUKS formats the block device or image file at dev as a LUKS2
// volume with the header UUID uuid and keyslot 0 for key, which reaches
// cryptsetup through a pipe. The keyslot is PBKDF2 with slotIterations, as
// Keyslots.Add makes them: key is a key file's FDE secret, 64 random
// bytes, which no key derivation makes harder to guess, and a slow one
// would cost every boot and every other keyslot's Find its time.
// Everything on dev is lost; only the header area is overwritten.
func FormatLUKS(ctx context.Context, cryptsetup, dev, uuid string, key secret.Bytes) error {
	in, err := keyPipe(key)
	if err != nil {
		return fmt.Errorf("format %s: %w", dev, err)
	}
	defer in.Close()
	k := Keyslots{Cryptsetup: cryptsetup, Dev: dev}
	if _, err := k.run(ctx, in, nil, "luksFormat", "--type", "luks2", "--uuid", uuid,
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", strconv.Itoa(slotIterations),
		"--key-slot", "0", "--key-file=-", dev); err != nil {
		return fmt.Errorf("format %s: %w", dev, err)
	}
	return nil
}

// CloseLUKS closes the volume opened as /dev/mapper/<name>, flushing it.
func CloseLUKS(ctx context.Context, cryptsetup, name string) error {
	k := Keyslots{Cryptsetup: cryptsetup}
	if _, err := k.run(ctx, nil, nil, "close", name); err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	return nil
}
