"""fastreg bench tools: load generators, SIPp scenarios and the side-by-side with Kamailio."""
