# Bridge lines (core/bridge_line.c, docs/bridge.md) into a real event producer.
soth_add_fuzz(bridge LIBS soth_core PkgConfig::JANSSON)
target_include_directories(fuzz_bridge PRIVATE ${PROJECT_SOURCE_DIR}/core)
