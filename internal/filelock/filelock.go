// Package filelock takes exclusive locks on files (flock), for processes
// that share a directory: labs' state, a shared build. It must not be used
// for locks within one process (use a sync.Mutex): a flock is per open
// file, and it is only advisory.
package filelock
