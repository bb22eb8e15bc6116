// Clarion Web SDK: placeholder until the build (websdk/) writes the bundle.
