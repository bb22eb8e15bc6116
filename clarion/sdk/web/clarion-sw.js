// Clarion Web SDK service worker: placeholder until the build (websdk/) writes it.
