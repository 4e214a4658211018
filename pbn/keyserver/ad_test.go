package keyserver

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/pbn-project/pbn/internal/samba"
	"github.com/pbn-project/pbn/keyfile"
	"github.com/pbn-project/pbn/pbn/ad"
)

func TestMain(m *testing.M) { os.Exit(samba.Main(m)) }

// adPassword is the test accounts' password, complex enough for Samba.
const adPassword = "Claim-Pa55word"

// TestClaimAgainstAD claims devices with accounts of a real Samba AD DC:
// the server binds as the user itself, records the owner by the
// directory's UPN and SID, and hands out the key of each of the user's
// groups. It does not prove anything about Windows domain controllers.
func TestClaimAgainstAD(t *testing.T) {
	dc := samba.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var dns []string
	for _, u := range []samba.User{
		{Name: "kalice", Password: adPassword},
		{Name: "kbob", Password: adPassword, State: samba.Disabled},
		{Name: "kcarol", Password: adPassword},
	} {
		dn, err := dc.AddUser(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		dns = append(dns, dn)
	}
	if _, err := dc.AddGroup("pbn-laptop-owners", dns[0], dns[1]); err != nil {
		t.Fatal(err)
	}
	c, err := ad.New(ad.Config{Domain: dc.DNSDomain, DCs: []string{dc.LDAPS()}, CA: dc.CA.PEM,
		OwnerGroups: []string{"pbn-laptop-owners"},
		Timeouts:    ad.Timeouts{Connect: 10 * time.Second, DC: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, nil, nil, func(cfg *Config) {
		cfg.Directory, cfg.LoginTimeout = AD(c), time.Minute
	})

	d := ts.enroll(t, "laptop-1", "laptops")
	claim, _, err := claimAs(d, "kalice@"+dc.DNSDomain, adPassword)
	if err != nil {
		t.Fatalf("Claim(kalice) = %v", err)
	}
	defer claim.Wipe()
	if claim.UPN != "kalice@"+dc.DNSDomain || claim.SID == "" || !claim.Primary {
		t.Errorf("Claim(kalice) = %s %s primary %t, want her UPN, SID, primary", claim.UPN, claim.SID, claim.Primary)
	}
	if !slices.ContainsFunc(claim.Groups, func(g keyfile.GroupKey) bool { return g.Name == "pbn-laptop-owners" }) {
		t.Errorf("Claim(kalice) groups %v, want pbn-laptop-owners with a key", claim.Groups)
	}

	tests := []struct {
		name, account, password string
		want                    error
	}{
		{"wrong password", "kalice@" + dc.DNSDomain, "Wrong-Pa55word", ErrLoginRefused},
		{"disabled account", "kbob@" + dc.DNSDomain, adPassword, ErrLoginRefused},
		{"not in an owner group", "kcarol@" + dc.DNSDomain, adPassword, ErrLoginRefused},
	}
	other := ts.enroll(t, "laptop-2", "laptops")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := claimAs(other, tt.account, tt.password); !errors.Is(err, tt.want) {
				t.Errorf("Claim(%s) = %v, want %v", tt.account, err, tt.want)
			}
		})
	}
}

// TestClaimADUnreachable claims with a directory whose only DC does not
// answer: the device hears that the server is unavailable, not that the
// password is wrong.
func TestClaimADUnreachable(t *testing.T) {
	dc := samba.Shared(t)
	c, err := ad.New(ad.Config{Domain: dc.DNSDomain, DCs: []string{"ldaps://127.0.0.1:1"},
		CA: dc.CA.PEM, OwnerGroups: []string{"pbn-laptop-owners"}})
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, nil, nil, func(cfg *Config) { cfg.Directory = AD(c) })
	d := ts.enroll(t, "laptop-1", "laptops")
	if _, _, err := claimAs(d, "kalice@"+dc.DNSDomain, adPassword); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Claim with no DC answering = %v, want ErrUnavailable", err)
	}
}
