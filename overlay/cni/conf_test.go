package cni

import (
	"strings"
	"testing"
)

func TestParseConfDefaults(t *testing.T) {
	c, err := ParseConf([]byte(`{"cniVersion":"1.1.0","name":"twill","type":"twill"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.SubnetFile != "/run/twill/subnet.env" || c.Bridge != "cni0" || c.DataDir != "/var/lib/cni/twill" || !c.IsGateway || !c.HairpinMode || c.IPMasq != nil {
		t.Errorf("defaults = %+v", c)
	}
	c, err = ParseConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"twill","bridge":"br7","isGateway":false,"ipMasq":true,"dataDir":"/d","subnetFile":"/s",
		"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"runtimeConfig":{},"capabilities":{"portMappings":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != "br7" || c.IsGateway || c.IPMasq == nil || !*c.IPMasq || c.DataDir != "/d" || c.SubnetFile != "/s" || len(c.ValidAttachments) != 1 {
		t.Errorf("parsed = %+v", c)
	}
}

func TestParseConfErrorsNameFieldAndValue(t *testing.T) {
	for _, tc := range []struct{ conf, want string }{
		{`{"name":"twill","type":"twill","bogus":42}`, `unknown field "bogus" (value 42)`},
		{`{"name":"twill","type":"twill","isGateway":"yes"}`, `field "isGateway" (value "yes"): not true or false`},
		{`{"name":"twill","type":"twill","bridge":"this-name-is-too-long"}`, `field "bridge" (value "this-name-is-too-long")`},
		{`{"name":"twill","type":"twill","dataDir":""}`, `field "dataDir" (value "")`},
		{`{"name":"twill","type":"twill","ipam":{"type":"host-local"}}`, `field "ipam" (value {"type":"host-local"})`},
		{`{"name":"twill",`, `decode network configuration`},
	} {
		_, err := ParseConf([]byte(tc.conf))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConf(%s) = %v, want an error containing %s", tc.conf, err, tc.want)
		}
	}
}
