//go:build !linux

package kubeapi

import "syscall"

// sysProcAttr: only Linux kills a child with its parent.
func sysProcAttr(bool) *syscall.SysProcAttr { return nil }
