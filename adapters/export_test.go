package adapters

// SetDiskHook sets the function a DiskStore calls after each step of a put
// (tests; see DiskStore.hook).
func SetDiskHook(s *DiskStore, fn func(step string) error) { s.hook = fn }

// DecodeFinite exposes decodeFinite to tests.
var DecodeFinite = decodeFinite
