package ad

import (
	"context"
	"testing"

	"github.com/pbn-project/pbn/pbn/secret"
)

// TestLookup looks accounts up with the lookup account, against the real
// DC: the owner an administrator names before imaging must exist and be
// able to sign in.
//
// What it does not prove: that the account's password is the one its
// owner will type; only Login proves that.
func TestLookup(t *testing.T) {
	f := setup(t)
	cfg := f.config()
	cfg.LookupAccount, cfg.LookupAccountPassword = "changer@"+f.dc.DNSDomain, secret.Bytes(password)
	c := f.client(t, cfg)
	tests := []struct {
		account string
		want    Reason // Other: found
	}{
		{"alice", Other},
		{`CORP\alice`, Other},
		{"nosuchuser", WrongCredentials},
		{"disabled", AccountDisabled},
		{"nomember", NotAllowed},
		{`OTHER\alice`, BadAccount},
	}
	for _, tt := range tests {
		t.Run(tt.account, func(t *testing.T) {
			id, err := c.Lookup(context.Background(), tt.account)
			if got := ReasonOf(err); err != nil && got != tt.want || err == nil && tt.want != Other {
				t.Fatalf("Lookup(%q) = %v (reason %v), want reason %v", tt.account, err, got, tt.want)
			}
			if err != nil {
				return
			}
			if id.UPN != "alice@corp.example.test" || id.SID == "" || len(id.Groups) == 0 {
				t.Errorf("Lookup(%q) = %+v, want alice with her SID and groups", tt.account, id)
			}
		})
	}

	cfg.LookupAccount = ""
	if _, err := f.client(t, cfg).Lookup(context.Background(), "alice"); ReasonOf(err) != LookupUnavailable {
		t.Errorf("Lookup without a lookup account = %v, want LookupUnavailable", err)
	}
}
