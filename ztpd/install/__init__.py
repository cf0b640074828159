"""OS installation: install files rendered per node and checked before they are served.

- ``render.Renderer(templates_dir, Mirrors)``: ``render(Target, name)`` gives one complete,
  checked file (autoinstall, preseed, kickstart, or the NoCloud seed of an image) or raises
  ``RenderError``; ``Renderer.files(method)`` lists what a method serves.
- ``checks``: the validators (subiquity's schema, debconf-set-selections, pykickstart).
- ``rootdisk.choose(hints, disks)``: the root disk a profile's ``os.root_disk`` picks.
- ``backend.StoreInstallBackend``: what ``ztpd.http.install`` needs from the store.
"""
