package store

import (
	"context"
	"errors"
	"testing"
)

func testAdmins(t *testing.T, dsn string) {
	s := open(t, dsn)
	ctx := context.Background()
	first, imaging := []byte("first admin's key"), []byte("imaging key")
	if err := s.AddAdmin(ctx, "admin", first); err != nil {
		t.Fatalf("AddAdmin = %v", err)
	}
	if err := s.NewAdmin(ctx, Admin{Name: "imaging", Role: RoleEnroll}, imaging); err != nil {
		t.Fatalf("NewAdmin(enroll) = %v", err)
	}
	tests := []struct {
		key  []byte
		want Admin
	}{
		{first, Admin{Name: "admin", Role: RoleAdmin}},
		{imaging, Admin{Name: "imaging", Role: RoleEnroll}},
	}
	for _, tt := range tests {
		got, err := s.Admin(ctx, tt.key)
		if err != nil || got.Name != tt.want.Name || got.Role != tt.want.Role || got.Added.IsZero() {
			t.Errorf("Admin(%q) = %+v, %v; want %+v, added", tt.key, got, err, tt.want)
		}
	}
	refused := []struct {
		name string
		a    Admin
		key  []byte
	}{
		{"a taken name", Admin{Name: "imaging", Role: RoleAdmin}, []byte("another key")},
		{"a taken key", Admin{Name: "imaging-2", Role: RoleAdmin}, imaging},
	}
	for _, tt := range refused {
		if err := s.NewAdmin(ctx, tt.a, tt.key); !errors.Is(err, ErrAdminExists) {
			t.Errorf("NewAdmin(%s) = %v, want ErrAdminExists", tt.name, err)
		}
	}
	if err := s.NewAdmin(ctx, Admin{Name: "root", Role: "root"}, []byte("another key")); err == nil {
		t.Error("NewAdmin(role root) = nil, want an error")
	}
	if _, err := s.Admin(ctx, []byte("another key")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Admin(a key never added) = %v, want ErrNotFound", err)
	}
	if got, err := s.Admin(ctx, imaging); err != nil || got.Name != "imaging" || got.Role != RoleEnroll {
		t.Errorf("Admin after the refusals = %+v, %v; want imaging, enroll", got, err)
	}

	as, err := s.Admins(ctx)
	if err != nil || len(as) != 2 || as[0].Name != "admin" || as[1].Name != "imaging" || as[1].Role != RoleEnroll {
		t.Errorf("Admins = %+v, %v; want admin, then imaging (enroll)", as, err)
	}
	if err := s.RemoveAdmin(ctx, "imaging"); err != nil {
		t.Fatalf("RemoveAdmin = %v", err)
	}
	if _, err := s.Admin(ctx, imaging); !errors.Is(err, ErrNotFound) {
		t.Errorf("Admin(removed) = %v, want ErrNotFound", err)
	}
	if err := s.RemoveAdmin(ctx, "imaging"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RemoveAdmin(removed) = %v, want ErrNotFound", err)
	}
}
