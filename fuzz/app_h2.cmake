# The HTTP/2 layer of a flow (core/app_h2.c) with its events checked: the event calls are
# wrapped by the linker (--wrap) so the target sees them before the real producer does.
# Seeds: fuzz/corpus/h2/ (same input format as fuzz_h2).
soth_add_fuzz(app_h2 LIBS soth_core)
target_include_directories(fuzz_app_h2 PRIVATE ${PROJECT_SOURCE_DIR}/core)
target_link_options(fuzz_app_h2 PRIVATE
  -Wl,--wrap=soth_ev_request_headers -Wl,--wrap=soth_ev_response_headers
  -Wl,--wrap=soth_ev_trailers -Wl,--wrap=soth_ev_body_chunk
  -Wl,--wrap=soth_ev_exchange_completed -Wl,--wrap=soth_ev_ws_message
  -Wl,--wrap=soth_ev_ws_turn_started -Wl,--wrap=soth_ev_ws_turn_completed
  -Wl,--wrap=soth_ev_sse_event)
