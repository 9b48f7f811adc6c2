package main

import (
	"bytes"
	"testing"

	"github.com/twillnet/twill/overlay/lease/kube"
)

func TestParseArgsKubeFlags(t *testing.T) {
	a, err := parseArgs(nil, func(string) string { return "" }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if a.kube.enabled || a.kube.prefix != kube.DefaultPrefix || a.kube.netConfPath != DefaultNetConfPath {
		t.Errorf("defaults %+v", a.kube)
	}
	env := map[string]string{
		"TWILLD_KUBE_SUBNET_MGR":        "true",
		"TWILLD_KUBECONFIG_FILE":        "/etc/twill/kubeconfig",
		"TWILLD_KUBE_ANNOTATION_PREFIX": kube.FlannelPrefix,
		"TWILLD_NET_CONFIG_PATH":        "/etc/kube-flannel/net-conf.json",
	}
	a, err = parseArgs([]string{"--kube-api-url=https://127.0.0.1:6443"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := kubeArgs{enabled: true, apiURL: "https://127.0.0.1:6443", kubeconfig: "/etc/twill/kubeconfig",
		prefix: kube.FlannelPrefix, netConfPath: "/etc/kube-flannel/net-conf.json"}
	if a.kube != want {
		t.Errorf("kube flags %+v, want %+v", a.kube, want)
	}
}
