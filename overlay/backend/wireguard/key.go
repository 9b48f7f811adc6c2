package wireguard

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeyFile is the name of the private key's file in the state directory.
const KeyFile = "wireguard.key"

// LoadKey reads the private key kept in dir, or, if there is none, makes
// one and keeps it there (mode 0600, dir created 0700). created says a new
// key was made. A file that holds no key is an error, not replaced: the
// operator deletes it to make a new key.
func LoadKey(dir string) (key wgtypes.Key, created bool, err error) {
	if dir == "" {
		return wgtypes.Key{}, false, errors.New("no state directory to keep the private key in (twilld --state-dir)")
	}
	path := filepath.Join(dir, KeyFile)
	data, err := os.ReadFile(path)
	if err == nil {
		key, err = wgtypes.ParseKey(strings.TrimSpace(string(data)))
		if err != nil {
			return wgtypes.Key{}, false, fmt.Errorf("private key file %s holds no WireGuard key (delete it to make a new key): %w", path, err)
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() != 0o600 {
			if err := os.Chmod(path, 0o600); err != nil {
				return wgtypes.Key{}, false, fmt.Errorf("make private key file %s mode 0600: %w", path, err)
			}
		}
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, false, fmt.Errorf("read private key file: %w", err)
	}
	if key, err = wgtypes.GeneratePrivateKey(); err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("make a private key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("create state directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, KeyFile+".new*")
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("write private key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600; the key is written, synced and
	// renamed into place, so a crash leaves the old state or the new key.
	_, werr := tmp.WriteString(key.String() + "\n")
	werr = errors.Join(werr, tmp.Sync(), tmp.Close())
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		return wgtypes.Key{}, false, fmt.Errorf("write private key file %s: %w", path, werr)
	}
	return key, true, nil
}
