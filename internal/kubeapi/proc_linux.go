package kubeapi

import "syscall"

// sysProcAttr asks Linux to kill the child when its parent thread ends.
func sysProcAttr(dieWithParent bool) *syscall.SysProcAttr {
	if !dieWithParent {
		return nil
	}
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
