# Builders for flakes without nixpkgs: packages from /bin/sh scripts, a busybox package, and
# docker-archives (.tar.gz, laid out as dockerTools.buildImage makes them) holding a package's closure.
# Builders use the host's coreutils/tar/gzip (the sandbox is off on these machines).
# The tests copy this file into their fixture flakes (tests/e2e/e2e_support.py: prepare_flake).
{ system, busyboxFile }:
let
  arch = { "x86_64-linux" = "amd64"; "aarch64-linux" = "arm64"; }.${system};
in
rec {
  # A derivation built by a /bin/sh script (`set -eu`, PATH=/usr/bin:/bin); extra attrs become env vars.
  run = name: script: attrs: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" ("set -eu\nexport PATH=/usr/bin:/bin\n" + script) ];
  } // attrs);

  # The static busybox as a package of its own: bin/busybox and bin/sh.
  busybox = run "busybox" ''
    mkdir -p $out/bin
    cp ${busyboxFile} $out/bin/busybox
    chmod 0555 $out/bin/busybox
    ln -s busybox $out/bin/sh
  '' { };

  # A docker-archive (gzip, no timestamp) whose single layer holds the closure of `pkg`.
  mkImage = { name, pkg, cmd, env ? [ "PATH=${pkg}/bin" ], tag ? "latest" }:
    run "docker-image-${name}.tar.gz" ''
      # exportReferencesGraph writes records: path, deriver, count, then `count` references.
      paths=$(awk 'st == 0 { print; st = 1; next }
                   st == 1 { st = 2; next }
                   st == 2 { n = $0 + 0; st = (n > 0) ? 3 : 0; next }
                   st == 3 { n--; if (n == 0) st = 0 }' closure | sort -u | sed 's|^/||')
      mkdir work
      cd work
      tar -C / --format=gnu --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner \
        -cf layer.tar --no-recursion nix nix/store --recursion $paths
      diff_id=$(sha256sum layer.tar | cut -c1-64)
      printf '%s' "$configTemplate" | sed "s/@DIFF_ID@/$diff_id/" > config.json
      config_id=$(sha256sum config.json | cut -c1-64)
      mv config.json "$config_id.json"
      mkdir "$diff_id"
      mv layer.tar "$diff_id/layer.tar"
      echo "1.0" > "$diff_id/VERSION"
      printf '[{"Config":"%s.json","RepoTags":["%s:%s"],"Layers":["%s/layer.tar"]}]' \
        "$config_id" "${name}" "${tag}" "$diff_id" > manifest.json
      printf '{"%s":{"%s":"%s"}}' "${name}" "${tag}" "$diff_id" > repositories
      tar --format=gnu --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner \
        -cf - manifest.json repositories "$config_id.json" "$diff_id" | gzip -n -9 > $out
    '' {
      exportReferencesGraph = [ "closure" pkg ];
      configTemplate = builtins.toJSON {
        architecture = arch;
        os = "linux";
        created = "1970-01-01T00:00:01Z";
        config = { Cmd = cmd; Env = env; };
        rootfs = { type = "layers"; diff_ids = [ "sha256:@DIFF_ID@" ]; };
        history = [ { created = "1970-01-01T00:00:01Z"; created_by = "nixforge fixture mkImage"; } ];
      };
    };

  # `<app>.containers` as nix-forge makes it with nixpkgs' linkFarm: a directory of links named
  # <img>.tar.gz (plus compose.yaml), carrying `entries` ("<img>.tar.gz" → image) so one image
  # builds alone. `withoutEntries` drops `entries`, for flakes whose containers don't carry them.
  mkContainers = name: images:
    let
      entries = builtins.listToAttrs (map (img: { name = "${img}.tar.gz"; value = images.${img}; })
        (builtins.attrNames images));
    in
    run "${name}-containers" (''
      mkdir $out
      echo "services: {}" > $out/compose.yaml
    '' + builtins.concatStringsSep "" (map (file: ''
      ln -s ${entries.${file}} $out/${file}
    '') (builtins.attrNames entries))) { } // { inherit entries; };

  withoutEntries = containers: builtins.removeAttrs containers [ "entries" ];
}
