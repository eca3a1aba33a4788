"""The edge that talks to TaskRouter (through the twilio SDK, never raw HTTP)."""
