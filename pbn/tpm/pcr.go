package tpm

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// NumPCRs is the number of PCRs a PC Client TPM has (TCG PC Client Platform
// TPM Profile, PCR bank allocation).
const NumPCRs = 24

// PCRSelection is a set of PCRs of the SHA-256 bank, each in 0..23.
type PCRSelection []int

// DefaultPCRs is the selection a Linux laptop seals to, in the measurements
// the TCG PC Client Platform Firmware Profile assigns them:
//
//   - 0: the firmware's code (changes with a firmware update);
//   - 2: option ROMs and other code the firmware runs from devices;
//   - 4: the boot manager code and the EFI applications it starts: the boot
//     loader and the kernel, or the unified kernel image that carries PBN's
//     initramfs (changes with a kernel or image update);
//   - 7: the Secure Boot state and the keys that verified what booted;
//   - 9: the initramfs, when Linux's EFI stub loads it separately (since
//     Linux 5.17; the PCR stays unextended otherwise).
//
// Left out: 1, 3 and 5 (firmware settings, boot order and the partition
// table: they change for reasons that do not weaken the chain and would
// force a re-seal without need), 8 (boot loaders' command lines), 10 and 11
// (IMA and systemd extend them in the running OS, which would make a re-seal
// from there produce values that the next boot never has again) and 16 and
// up (debug and locality PCRs).
var DefaultPCRs = PCRSelection{0, 2, 4, 7, 9}

// ErrNoPCRBinding is returned by TPM.Seal (and Factor.Enroll) when it cannot
// bind the secret to PCRs: the selection is empty or the TPM has no active
// SHA-256 bank for it. PBN never seals without a PCR binding.
var ErrNoPCRBinding = errors.New("no PCR binding")

// ParsePCRSelection parses a comma-separated list of PCR numbers such as
// "0,2,4,7".
func ParsePCRSelection(s string) (PCRSelection, error) {
	var sel PCRSelection
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("tpm: PCR selection %q: %q is not a PCR number", s, f)
		}
		sel = append(sel, n)
	}
	sel = sel.normal()
	if err := sel.check(); err != nil {
		return nil, fmt.Errorf("tpm: PCR selection %q: %w", s, err)
	}
	return sel, nil
}

func (s PCRSelection) String() string {
	f := make([]string, len(s))
	for i, p := range s {
		f[i] = strconv.Itoa(p)
	}
	return strings.Join(f, ",")
}

// normal returns the selection sorted and without repeats.
func (s PCRSelection) normal() PCRSelection {
	n := slices.Clone(s)
	slices.Sort(n)
	return slices.Compact(n)
}

func (s PCRSelection) check() error {
	if len(s) == 0 {
		return fmt.Errorf("%w: the selection is empty", ErrNoPCRBinding)
	}
	for _, p := range s {
		if p < 0 || p >= NumPCRs {
			return fmt.Errorf("PCR %d does not exist (want 0 to %d)", p, NumPCRs-1)
		}
	}
	return nil
}

// mask returns the selection as the PC Client's 3-byte bit map (Part 2,
// 10.6.1 TPMS_PCR_SELECT).
func (s PCRSelection) mask() [NumPCRs / 8]byte {
	var m [NumPCRs / 8]byte
	for _, p := range s {
		m[p/8] |= 1 << (p % 8)
	}
	return m
}

// selectionFromMask is the inverse of mask.
func selectionFromMask(m [NumPCRs / 8]byte) PCRSelection {
	var s PCRSelection
	for p := range NumPCRs {
		if m[p/8]&(1<<(p%8)) != 0 {
			s = append(s, p)
		}
	}
	return s
}

// tpml returns the selection on the SHA-256 bank as the TPM takes it.
func (s PCRSelection) tpml() tpm2.TPMLPCRSelection {
	m := s.mask()
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: m[:],
	}}}
}

// PCRValue is the value of one PCR of the SHA-256 bank.
type PCRValue struct {
	PCR    int
	Digest []byte
}

// maxPCRsPerRead is how many PCRs TPM2_PCR_Read returns at most (Part 3,
// 22.4: a TPML_DIGEST holds at most eight digests).
const maxPCRsPerRead = 8

// PCRs reads the selected PCRs of the SHA-256 bank (Part 3, 22.4
// TPM2_PCR_Read). It returns an error wrapping ErrNoPCRBinding when the TPM
// has no active SHA-256 bank for a selected PCR.
func (t *TPM) PCRs(ctx context.Context, sel PCRSelection) ([]PCRValue, error) {
	sel = sel.normal()
	if err := sel.check(); err != nil {
		return nil, fmt.Errorf("tpm: read PCRs: %w", err)
	}
	vals, err := readPCRs(t.with(ctx), sel)
	if err != nil {
		return nil, fmt.Errorf("tpm: read PCRs %v: %w", sel, err)
	}
	return vals, nil
}

func readPCRs(tr transport.TPM, sel PCRSelection) ([]PCRValue, error) {
	var vals []PCRValue
	for chunk := range slices.Chunk(sel, maxPCRsPerRead) {
		rsp, err := (tpm2.PCRRead{PCRSelectionIn: chunk.tpml()}).Execute(tr)
		if err != nil {
			return nil, err
		}
		got := rsp.PCRSelectionOut.PCRSelections
		if len(got) != 1 || got[0].Hash != tpm2.TPMAlgSHA256 ||
			len(got[0].PCRSelect) != NumPCRs/8 ||
			!slices.Equal(selectionFromMask([NumPCRs / 8]byte(got[0].PCRSelect)), chunk) {
			return nil, fmt.Errorf("%w: the TPM has no active SHA-256 bank for PCRs %v", ErrNoPCRBinding, chunk)
		}
		if len(rsp.PCRValues.Digests) != len(chunk) {
			return nil, fmt.Errorf("the TPM returned %d PCR values for %d PCRs",
				len(rsp.PCRValues.Digests), len(chunk))
		}
		for i, d := range rsp.PCRValues.Digests {
			if len(d.Buffer) != sha256.Size {
				return nil, fmt.Errorf("the TPM returned a %d-byte SHA-256 PCR value", len(d.Buffer))
			}
			vals = append(vals, PCRValue{chunk[i], d.Buffer})
		}
	}
	return vals, nil
}

// pcrDigest is the digest TPM2_PolicyPCR compares with the PCRs: SHA-256 over
// their values in selection order (Part 3, 23.7).
func pcrDigest(vals []PCRValue) []byte {
	h := sha256.New()
	for _, v := range vals {
		h.Write(v.Digest)
	}
	return h.Sum(nil)
}
