// Command kube-apiserver is the official Kubernetes API server, built from
// the k8s.io/kubernetes module at the version this module pins, so that
// twill's tests run against the real server. It adds nothing of twill's
// and must not: it only calls the upstream command.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go's metrics, as upstream registers them
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
