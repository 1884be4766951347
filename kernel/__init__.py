"""The ground every room stands on: settings, database, key store, replay cache, web plumbing,
JOSE, and the XML security layer (`kernel.xml`). It knows no room and imports none."""
