// Command kube-controller-manager is the official Kubernetes controller
// manager, built from the k8s.io/kubernetes module at the version this
// module pins; twill's labs use it as the node IPAM controller
// (--allocate-node-cidrs). It adds nothing of twill's and must not.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go's metrics, as upstream registers them
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
