package cni

import (
	"fmt"

	"github.com/containernetworking/cni/libcni"
)

// PluginType is the plugin's type in a network configuration list.
const PluginType = "twill"

// CheckConflist says whether b is a network configuration list (a
// conflist, as runtimes read from /etc/cni/net.d) that runs this plugin
// with a configuration ParseConf accepts.
func CheckConflist(b []byte) error {
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return err
	}
	for _, p := range list.Plugins {
		if p.Network.Type == PluginType {
			if _, err := ParseConf(p.Bytes); err != nil {
				return fmt.Errorf("plugin %q: %w", PluginType, err)
			}
			return nil
		}
	}
	return fmt.Errorf("no plugin of type %q in network %q", PluginType, list.Name)
}
