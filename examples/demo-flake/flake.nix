{
  description = "nixforge quick-start demo: no nixpkgs, no inputs; scripts/quickstart.sh copies a static busybox in";

  outputs = { self }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);

      packagesFor = system:
        let
          lib = import ./lib.nix { inherit system; busyboxFile = ./busybox; };
          inherit (lib) run mkImage busybox;

          hello = run "hello" ''
            mkdir -p $out/bin
            cp ${./busybox} $out/bin/busybox
            chmod 0555 $out/bin/busybox
            printf '#!%s/bin/busybox sh\necho "Hello from nixforge"\n' "$out" > $out/bin/hello
            chmod 0555 $out/bin/hello
          '' { };

          # No `.image`: nixforge assembles its image from the closure (greet + busybox).
          greet = run "greet" ''
            mkdir -p $out/bin
            printf '#!%s/bin/busybox sh\necho "Greetings from a closure image, $(%s/bin/busybox uname -m)"\n' \
              "${busybox}" "${busybox}" > $out/bin/greet
            chmod 0555 $out/bin/greet
          '' { } // { meta.mainProgram = "greet"; };
        in
        {
          inherit busybox greet;
          # `hello.image` is a docker-archive, as dockerTools.buildImage makes: nixforge serves it as is.
          hello = hello // { image = mkImage { name = "hello"; pkg = hello; cmd = [ "${hello}/bin/hello" ]; }; };
        };
    in
    {
      packages = forAllSystems packagesFor;
    };
}
