package tpm

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// Info describes a TPM for an administrator.
type Info struct {
	// Manufacturer is the TCG vendor ID (TPM_PT_MANUFACTURER), such as
	// "IFX", "NTC", "STM" or "IBM" (swtpm).
	Manufacturer string
	// Vendor is the vendor's free-form model string
	// (TPM_PT_VENDOR_STRING_1 to 4).
	Vendor string
	// Firmware is the firmware version, as the two 32-bit words
	// TPM_PT_FIRMWARE_VERSION_1 and 2 in hex.
	Firmware string
	// FailedTries, MaxTries and Interval are the dictionary-attack state:
	// TPM_PT_LOCKOUT_COUNTER, TPM_PT_MAX_AUTH_FAIL and
	// TPM_PT_LOCKOUT_INTERVAL.
	FailedTries, MaxTries uint32
	Interval              time.Duration
}

// Info reads the TPM's identity and dictionary-attack state (Part 3, 30.2
// TPM2_GetCapability, TPM_CAP_TPM_PROPERTIES; the properties are listed in
// Part 2, TPM_PT).
func (t *TPM) Info(ctx context.Context) (*Info, error) {
	tr := t.with(ctx)
	props, err := properties(tr, tpm2.TPMPTManufacturer, 8)
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	var info Info
	info.Manufacturer = chars(props[tpm2.TPMPTManufacturer])
	for _, p := range []tpm2.TPMPT{tpm2.TPMPTVendorString1, tpm2.TPMPTVendorString2,
		tpm2.TPMPTVendorString3, tpm2.TPMPTVendorString4} {
		info.Vendor += chars(props[p])
	}
	info.Firmware = fmt.Sprintf("%08x.%08x",
		props[tpm2.TPMPTFirmwareVersion1], props[tpm2.TPMPTFirmwareVersion2])
	info.FailedTries, info.MaxTries, info.Interval, err = daState(tr)
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	return &info, nil
}

// chars reads a property that holds up to four ASCII characters.
func chars(v uint32) string {
	b := binary.BigEndian.AppendUint32(nil, v)
	return strings.TrimRight(strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, string(b)), " ")
}
