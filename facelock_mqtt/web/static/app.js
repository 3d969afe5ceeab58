// FaceLock panel
